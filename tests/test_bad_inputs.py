"""Hostile and broken inputs: each must end in a one-line error (or a reported skip) and leave every file
that was already there as it was. One section per kind of input; fetch-data first."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from scenecls import files
from scenecls.cli import cli
from scenecls.data import archives, fetch
from scenecls.data.archives import copy_folder, extract_archive
from scenecls.data.download import download, is_kaggle_url
from scenecls.data.fetch import fetch_dataset
from scenecls.errors import DataError, DownloadError
from scenecls.units import byte_size
from tests.conftest import ctrl_c_at_batch, write_class_folders
from tests.test_fetch import intel_like_zip, make_zip

PAYLOAD = bytes(range(256)) * 4096


def one_error_line(result) -> str:
    """The single ``Error:`` line of a CLI result; fails on a traceback or several lines."""
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def fetch_cli(*args: str):
    return CliRunner().invoke(cli, ["fetch-data", *args])


@pytest.fixture
def intel_zip(tmp_path) -> Path:
    archive = tmp_path / "intel.zip"
    archive.write_bytes(intel_like_zip(tmp_path))
    return archive


# ------------------------------------------------------------------- fetch-data: what it may replace


def test_force_refuses_a_folder_it_did_not_create(tmp_path, intel_zip):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    result = fetch_cli("--from", str(intel_zip), "--dest", str(victim), "--force")
    assert result.exit_code == 1
    assert "did not put there" in one_error_line(result)
    assert (victim / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.tex"]
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".victim")] == []


def test_without_force_a_foreign_folder_is_not_called_a_data_set(tmp_path, intel_zip):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    result = fetch_cli("--from", str(intel_zip), "--dest", str(victim))
    assert result.exit_code == 1
    assert "already holds" not in result.output
    assert "did not put there" in one_error_line(result)


def test_force_on_the_working_folder_is_refused(tmp_path, intel_zip, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "script.py").write_text("print(1)")
    monkeypatch.chdir(work)
    result = fetch_cli("--from", str(intel_zip), "--dest", ".", "--force")
    assert result.exit_code == 1
    assert (work / "script.py").exists()


def test_an_empty_folder_is_filled(tmp_path, intel_zip):
    dest = tmp_path / "empty"
    dest.mkdir()
    result = fetch_dataset(dest, source=intel_zip)
    assert result.counts["train"]["alpha"] == 3
    assert (dest / fetch.MARKER).is_file()


def test_force_replaces_its_own_data_set_but_not_an_archive_inside_it(tmp_path, intel_zip):
    dest = tmp_path / "data"
    fetch_dataset(dest, source=intel_zip)
    inside = dest / "intel-copy.zip"
    inside.write_bytes(intel_zip.read_bytes())
    with pytest.raises(DataError, match="inside"):
        fetch_dataset(dest, source=inside, force=True)
    assert inside.is_file()
    fetch_dataset(dest, source=intel_zip, force=True)  # from outside it is replaced
    assert not inside.exists()


def test_dest_inside_the_source_folder_is_refused(tmp_path):
    source = write_class_folders(tmp_path / "photos", 2, size=8)
    with pytest.raises(DataError, match="inside --from"):
        fetch_dataset(source / "copy", source=source)
    assert not (source / "copy").exists()


def test_force_through_a_symlinked_dest_keeps_the_link(tmp_path, intel_zip):
    real = tmp_path / "disk" / "intel"
    fetch_dataset(real, source=intel_zip)
    link = tmp_path / "intel"
    link.symlink_to(real, target_is_directory=True)
    result = fetch_dataset(link, source=intel_zip, force=True)
    assert not result.already_present
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert (real / "train" / "alpha").is_dir()
    assert [p.name for p in (tmp_path / "disk").iterdir()] == ["intel"]


def test_a_mount_point_is_filled_and_replaced_in_place(tmp_path, intel_zip, monkeypatch):
    """A mount point cannot be renamed (EBUSY): its entries are swapped instead, nothing left over."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(fetch.os.path, "ismount", lambda p: Path(p) == mount or real_ismount(p))
    real_rename = Path.rename

    def rename(self, target):
        if Path(self) == mount:
            raise OSError(errno.EBUSY, "Device or resource busy", str(self))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    fetch_dataset(mount, source=intel_zip)
    assert sorted(p.name for p in mount.iterdir()) == [fetch.MARKER, "pred", "test", "train"]
    fetch_dataset(mount, source=intel_zip, force=True)
    assert sorted(p.name for p in mount.iterdir()) == [fetch.MARKER, "pred", "test", "train"]
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_read_only_destination_is_one_line(tmp_path, intel_zip, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(fetch, "make_staging", read_only)
    result = fetch_cli("--from", str(intel_zip), "--dest", str(tmp_path / "d"))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "Read-only file system" in line and "unexpected" not in line


# --------------------------------------------------------------------------- fetch-data: credentials


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://www.kaggle.com/api/v1/datasets/download/x/y", True),
        ("https://kaggle.com/x", True),
        ("https://storage.kaggle.com./x", True),
        ("http://www.kaggle.com/x", False),
        ("https://attacker-kaggle.com/x", False),
        ("https://kaggle.com.evil.net/x", False),
        ("https://evil.net/?kaggle.com", False),
        ("https://kaggle.com@evil.net/x", False),
    ],
)
def test_credentials_only_over_https_to_kaggle(url, allowed):
    assert is_kaggle_url(url) is allowed


def test_credentials_are_not_sent_to_other_hosts(http_server, tmp_path, monkeypatch, intel_zip):
    base, state = http_server
    state.files["/kaggle.com/data.zip"] = intel_zip.read_bytes()
    monkeypatch.setenv("KAGGLE_USERNAME", "user")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    fetch_dataset(tmp_path / "d", url=f"{base}/kaggle.com/data.zip")
    assert [r["auth"] for r in state.requests] == [None]


# ------------------------------------------------------------------------------ fetch-data: downloads


def test_a_web_page_served_as_the_archive_is_not_kept(http_server, tmp_path, intel_zip):
    base, state = http_server
    state.files["/data.zip"] = b"<!DOCTYPE html><html><body>Please sign in</body></html>"
    state.content_type["/data.zip"] = "text/html"
    with pytest.raises(DownloadError, match="web page"):
        fetch_dataset(tmp_path / "d", url=f"{base}/data.zip")
    assert list((tmp_path / ".downloads").iterdir()) == []
    state.files["/data.zip"] = intel_zip.read_bytes()  # fixed on the server: the next run fetches it
    assert fetch_dataset(tmp_path / "d", url=f"{base}/data.zip").counts["train"]["alpha"] == 3


def test_a_damaged_download_is_fetched_again_by_the_next_run(http_server, tmp_path, intel_zip):
    base, state = http_server
    good = intel_zip.read_bytes()
    state.files["/data.zip"] = good[: len(good) // 2]  # a server that lost the tail
    with pytest.raises(DataError, match="truncated zip"):
        fetch_dataset(tmp_path / "d", url=f"{base}/data.zip")
    state.files["/data.zip"] = good
    assert fetch_dataset(tmp_path / "d", url=f"{base}/data.zip").counts["train"]["alpha"] == 3


def test_force_downloads_again(http_server, tmp_path, intel_zip):
    base, state = http_server
    state.files["/data.zip"] = intel_zip.read_bytes()
    dest = tmp_path / "d"
    fetch_dataset(dest, url=f"{base}/data.zip", keep_archive=True)
    requests = len(state.requests)
    fetch_dataset(dest, url=f"{base}/data.zip", keep_archive=True, force=True)
    assert len(state.requests) == requests + 1


def test_resume_after_the_file_changed_does_not_splice(http_server, tmp_path):
    base, state = http_server
    old = PAYLOAD
    new = bytes(reversed(PAYLOAD))
    state.files["/data.bin"] = old
    state.cut_after["/data.bin"] = 300_000
    target = tmp_path / "data.bin"
    with pytest.raises(DownloadError):
        download(f"{base}/data.bin", target, retries=0)
    state.files["/data.bin"] = new
    download(f"{base}/data.bin", target, retries=0)
    assert target.read_bytes() == new
    assert state.requests[-1]["if_range"] is not None


def test_resume_without_a_validator_starts_again(http_server, tmp_path):
    base, state = http_server
    state.files["/data.bin"] = PAYLOAD
    state.etags = False
    (tmp_path / "data.bin.part").write_bytes(b"bytes of unknown origin")
    download(f"{base}/data.bin", tmp_path / "data.bin")
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert state.requests[-1]["range"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "not a url"], "--url takes"),
        (["--url", "ftp://host/x.zip"], "--url takes"),
        (["--url", "http://127.0.0.1:9/x.zip", "--sha256", "abc"], "--sha256 takes 64"),
    ],
)
def test_bad_url_and_checksum_are_usage_errors(tmp_path, args, message):
    result = fetch_cli(*args, "--dest", str(tmp_path / "d"))
    assert result.exit_code == 2
    assert message in one_error_line(result)
    assert not (tmp_path / ".downloads").exists()


def test_sha256_with_a_folder_is_refused(tmp_path):
    source = write_class_folders(tmp_path / "photos", 2, size=8)
    result = fetch_cli("--from", str(source), "--dest", str(tmp_path / "d"), "--sha256", "0" * 64)
    assert result.exit_code == 2
    assert "folder" in one_error_line(result)


# ------------------------------------------------------------------------------ fetch-data: archives


def patch_zip(data: bytes, *, flag: int | None = None, method: int | None = None) -> bytes:
    """Set the general-purpose flag or compression method of every entry, in both headers."""
    raw = bytearray(data)
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = raw.find(signature)
        while at != -1:
            if flag is not None:
                raw[at + flag_at : at + flag_at + 2] = flag.to_bytes(2, "little")
            if method is not None:
                raw[at + method_at : at + method_at + 2] = method.to_bytes(2, "little")
            at = raw.find(signature, at + 4)
    return bytes(raw)


@pytest.mark.parametrize(
    ("patch", "message"),
    [({"flag": 1}, "encrypted"), ({"method": 9}, "Deflate64"), ({"method": 98}, "PPMd")],
)
def test_zips_python_cannot_unpack_are_named(tmp_path, patch, message):
    archive = tmp_path / "a.zip"
    archive.write_bytes(patch_zip(make_zip({"alpha/1.jpg": b"x" * 100}), **patch))
    result = fetch_cli("--from", str(archive), "--dest", str(tmp_path / "d"))
    assert result.exit_code == 1
    assert message in one_error_line(result)
    assert not (tmp_path / "d").exists()


def test_compression_ratio_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "RATIO_FLOOR", 100_000)
    archive = tmp_path / "bomb.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * 2_000_000)
    archive.write_bytes(buffer.getvalue())
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match="compression ratio"):
        extract_archive(archive, out)
    assert list(out.iterdir()) == []


def test_archive_larger_than_the_free_disk_is_refused(tmp_path, intel_zip, monkeypatch):
    usage = fetch.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: usage._replace(free=files.DISK_HEADROOM))
    with pytest.raises(DataError, match="not enough disk space"):
        fetch_dataset(tmp_path / "d", source=intel_zip)
    assert not (tmp_path / "d").exists()


def test_limits_are_said_in_binary_units(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"big.bin": b"\0" * 10_000}))
    with pytest.raises(DataError, match=r"the 4\.9 KiB limit"):
        extract_archive(archive, tmp_path / "out", max_bytes=5_000)
    sizes = [20 * 1024**3, 1536 * 1024**2, 100 * 1024**2, 2048, 1023, 0]
    assert [byte_size(n) for n in sizes] == ["20.0 GiB", "1.5 GiB", "100.0 MiB", "2.0 KiB", "1023 B", "0 B"]


def test_empty_and_tailless_archives_say_so(tmp_path, intel_zip):
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        extract_archive(empty, tmp_path / "o1")
    gz = tmp_path / "cut.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        tar.add(write_class_folders(tmp_path / "src", 2, size=8), arcname="set")
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(DataError, match="truncated"):
        extract_archive(gz, tmp_path / "o2")


# ------------------------------------------------------------------------ fetch-data: --from FOLDER


def test_folder_link_to_a_file_outside_is_refused(tmp_path):
    source = write_class_folders(tmp_path / "photos", 2, size=8)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"private")
    (source / "alpha" / "leak.jpg").symlink_to(secret)
    with pytest.raises(DataError, match="outside the folder"):
        fetch_dataset(tmp_path / "d", source=source)
    assert not (tmp_path / "d").exists()


def test_folder_link_loop_is_refused_in_one_line(tmp_path):
    source = write_class_folders(tmp_path / "photos", 2, size=8)
    (source / "alpha" / "loop").symlink_to(source, target_is_directory=True)
    result = fetch_cli("--from", str(source), "--dest", str(tmp_path / "d"))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "link to a folder" in line and len(line) < 300


def test_folder_link_to_a_file_inside_is_copied_as_a_file(tmp_path):
    source = write_class_folders(tmp_path / "photos", 2, size=8)
    first = sorted((source / "alpha").iterdir())[0]
    (source / "beta" / "shared.jpg").symlink_to(first)
    dest = tmp_path / "d"
    fetch_dataset(dest, source=source)
    copied = dest / "beta" / "shared.jpg"
    assert not copied.is_symlink() and copied.read_bytes() == first.read_bytes()


def test_folder_over_the_size_cap_is_refused(tmp_path):
    source = write_class_folders(tmp_path / "photos", 2, size=8)
    with pytest.raises(DataError, match="limit"):
        copy_folder(source, tmp_path / "out", max_bytes=100)


# --------------------------------------------------------------------------------------- images


def png_bytes(width: int, height: int) -> bytes:
    """A valid grayscale PNG of zeros, compressed row by row (a 13000x13000 one is about 170 KB)."""
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_hand_written_png_decodes():
    image = Image.open(io.BytesIO(png_bytes(3, 2)))
    assert image.size == (3, 2) and image.getpixel((2, 1)) == 0


def test_oversize_png_is_reported_unreadable_without_decoding(tmp_path):
    from scenecls.data.images import MAX_PIXELS, ImageReadError, check_image, load_rgb

    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(13000, 13000))
    reason = check_image(path)
    assert reason is not None and "too large" in reason and f"{MAX_PIXELS // 1_000_000}" in reason
    with pytest.raises(ImageReadError, match="too large"):
        load_rgb(path, (64, 64))


def test_pillow_bomb_warnings_do_not_reach_the_user(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(13000, 13000))  # over Pillow's own 89-megapixel warning
    code = f"from scenecls.data.images import check_image; print(check_image({str(path)!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "too large" in done.stdout
    assert done.stderr == ""


def test_large_jpeg_is_decoded_downscaled(tmp_path):
    from scenecls.data.images import MAX_PIXELS, check_image, load_rgb

    side = 9000  # 81 megapixels: over the cap at full size, 1/8 of each side in JPEG draft mode
    assert side * side > MAX_PIXELS
    path = tmp_path / "big.jpg"
    Image.new("L", (side, side), 128).save(path, quality=50)
    assert check_image(path) is None
    image = load_rgb(path, (32, 32))
    assert image.shape == (32, 32, 3) and int(image.mean()) in range(120, 137)


def test_folder_with_oversize_images_skips_them(tmp_path):
    from scenecls.data.pipeline import prepare_data

    root = write_class_folders(tmp_path / "set", 4, size=16)
    (root / "alpha" / "bomb.png").write_bytes(png_bytes(13000, 13000))
    data = prepare_data(root, cache_root=tmp_path / "cache")
    assert [(Path(p).name, "too large" in r) for p, r in data.skipped] == [("bomb.png", True)]


# ------------------------------------------------------------------------------------- scripts


def test_closed_output_pipe_exits_quietly(tmp_path, intel_zip):
    """``scenecls ... --format csv | head`` must not print a BrokenPipeError."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first row is written
    try:
        args = ["fetch-data", "--from", str(intel_zip), "--dest", str(tmp_path / "d"), "--format", "csv"]
        done = subprocess.run(
            [sys.executable, "-m", "scenecls", "-q", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""


def test_quiet_is_accepted_after_the_subcommand(tmp_path, intel_zip):
    result = CliRunner().invoke(
        cli, ["fetch-data", "--from", str(intel_zip), "--dest", str(tmp_path / "d"), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "alpha" in result.stdout  # the results still print
    loud = CliRunner().invoke(cli, ["fetch-data", "--from", str(intel_zip), "--dest", str(tmp_path / "d")])
    assert "already holds" in loud.stderr


# ------------------------------------------------------------------------------------- training

TINY = ["--backbone", "mobilenet_v2", "--weights", "none", "--image-size", "32", "-b", "8", "--no-export"]


def strict_json(path: Path):
    """Parse as standard JSON: ``NaN`` and ``Infinity`` are refused."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    write_class_folders(root / "train", 8, seed=1, size=40)
    return root


def train_cli(*args: str):
    return CliRunner().invoke(cli, ["train", *args])


def test_diverged_training_fails_with_advice_and_valid_json(small_set, tmp_path, monkeypatch):
    from scenecls.training import recipe

    # The command line refuses a rate above 10, so the rate that makes the run diverge at its first
    # step (1e38, as a bad schedule or a bug would) is given to the optimizer directly.
    monkeypatch.setattr(recipe, "learning_rate", lambda phase, config, steps: 1e38)
    project = tmp_path / "runs"
    result = train_cli(
        "--data", str(small_set), *TINY, "--epochs", "3", "--finetune-epochs", "0", "--lr", "10",
        "--project", str(project), "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "diverged" in line and "lower --lr" in line
    assert result.stdout == ""  # no summary, no Keras message among the results
    run = project / "train"
    state = strict_json(run / "state.json")
    assert state["status"] == "failed" and "diverged" in state["error"]
    assert not (run / "best.keras").exists()  # nothing non-finite is ever kept as best


def test_predict_refuses_labels_that_do_not_fit_the_model(small_set, tmp_path):
    project = tmp_path / "runs"
    trained = train_cli(
        "--data", str(small_set), *TINY, "--epochs", "1", "--finetune-epochs", "0", "--project", str(project)
    )
    assert trained.exit_code == 0, trained.output
    run = project / "train"
    assert oct((run / "config.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    labels = json.loads((run / "labels.json").read_text())
    labels["classes"] = labels["classes"][:2]
    (run / "labels.json").write_text(json.dumps(labels))
    image = next((small_set / "train" / "alpha").iterdir())
    result = CliRunner().invoke(cli, ["predict", str(image), "--model", str(run)])
    assert result.exit_code == 1
    assert "labels name 2" in one_error_line(result)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--unfreeze", "99"], 2, "--unfreeze 99: this backbone has 18 blocks"),
        (["--unfreeze", "1,99"], 2, "--unfreeze 99"),
        (["--val-split", "1"], 2, "--val-split"),
        (["--weights", "."], 1, "is a folder"),
    ],
)
def test_bad_training_options_leave_no_run_folder(small_set, tmp_path, args, code, message):
    project = tmp_path / "runs"
    result = train_cli("--data", str(small_set), *TINY, "--epochs", "1", *args, "--project", str(project))
    assert result.exit_code == code
    assert message in one_error_line(result)
    assert not (project / "train").exists()


def test_one_image_per_class_is_a_clear_error(tmp_path):
    data = write_class_folders(tmp_path / "one", 1, size=16)
    project = tmp_path / "runs"
    result = train_cli("--data", str(data), *TINY, "--project", str(project))
    assert result.exit_code == 1
    assert "no validation images" in one_error_line(result)
    assert not (project / "train").exists()
    again = train_cli("--data", str(data), *TINY, "--project", str(project))
    assert "Run folder: " + str(project / "train") in again.stderr  # not train2


def test_non_utf8_file_names_train(tmp_path):
    data = write_class_folders(tmp_path / "set", 6, size=16)
    odd = data / "alpha" / os.fsdecode(b"bad\xffbyte.jpg")
    Image.new("RGB", (16, 16), (200, 40, 40)).save(odd, format="JPEG")
    (data / "beta" / os.fsdecode(b"broken\xfe.jpg")).write_bytes(b"not a jpeg")
    project = tmp_path / "runs"
    result = train_cli(
        "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "0", "--project", str(project)
    )
    assert result.exit_code == 0, result.output
    config = strict_json(project / "train" / "config.json")
    assert config["images"]["skipped"] == 1 and config["images"]["train"] + config["images"]["val"] == 19
    assert "broken" in result.stderr


def test_empty_class_folder_is_reported(tmp_path):
    from scenecls.data.pipeline import prepare_data

    data = write_class_folders(tmp_path / "set", 3, size=16)
    (data / "delta").mkdir()
    (data / "delta" / "notes.txt").write_text("no images yet")
    warnings: list[str] = []

    class Collect:
        def log(self, message):
            pass

        def warn(self, message):
            warnings.append(message)

        def task(self, *args, **kwargs):
            from scenecls.reporting import NullReporter

            return NullReporter().task("")

    prepared = prepare_data(data, reporter=Collect(), cache_root=tmp_path / "cache")
    assert prepared.classes == ["alpha", "beta", "gamma"]
    assert any("delta" in w and "no images" in w for w in warnings)


def test_killed_before_the_first_epoch_resumes(small_set, tmp_path):
    """SIGKILL while the model is being built: the run folder says where it stands, --resume finishes it,
    and a half-written temporary file of a killed save is cleaned up."""
    import signal
    import time

    project = tmp_path / "runs"
    args = [
        "--data",
        str(small_set),
        *TINY,
        "--epochs",
        "1",
        "--finetune-epochs",
        "0",
        "--project",
        str(project),
    ]
    env = {**os.environ, "SCENECLS_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(
        [sys.executable, "-m", "scenecls", "-q", "train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = project / "train" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert state.exists() and not (project / "train" / "history.csv").exists()
    stale = project / "train" / ".last.keras.abcd1234.keras"
    stale.write_bytes(b"half a model")
    resumed = subprocess.run(
        [sys.executable, "-m", "scenecls", "train", "--resume", str(project / "train")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert strict_json(state)["status"] == "finished"
    assert not stale.exists()


def test_predict_explains_a_missing_model_in_phase_one(tmp_path):
    from scenecls import runs

    run = tmp_path / "runs" / "train"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    state = {"status": "running", "epoch": 31, "phase": 0, "head_checkpoint": True}
    (run / "state.json").write_text(json.dumps(state))
    with pytest.raises(Exception, match="phase 1 after 31 epochs"):
        runs.resolve_model(str(run), tmp_path / "runs")


def test_feature_cache_status_survives_a_resume_in_fine_tuning(small_set, tmp_path, monkeypatch):
    project = tmp_path / "runs"
    args = ["--data", str(small_set), *TINY, "-b", "12", "--epochs", "1", "--finetune-epochs", "2",
            "--unfreeze", "1", "--project", str(project)]  # fmt: skip
    with ctrl_c_at_batch(monkeypatch, 5):  # 2 batches of the head epoch, 2 of fine-tuning, then this
        assert train_cli(*args).exit_code == 130
    phase_one = strict_json(project / "train" / "state.json")["feature_cache"]
    assert phase_one in ("built", "reused")  # reused when an earlier test cached these images
    assert train_cli("--resume", str(project / "train")).exit_code == 0
    assert strict_json(project / "train" / "metrics.json")["feature_cache"] == phase_one


# ---------------------------------------------------------------------------------------- CSV


@pytest.fixture
def csv_set(tmp_path) -> Path:
    """``train.csv`` beside ``images/`` holding 0.jpg ... 5.jpg."""
    source = write_class_folders(tmp_path / "src", 1, size=8, classes=tuple("abcdef"))
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    for number, name in enumerate("abcdef"):
        next((source / name).iterdir()).rename(root / "images" / f"{number}.jpg")
    return root


def write_csv(root: Path, rows: list[str]) -> Path:
    path = root / "train.csv"
    path.write_text("image_name,label\n" + "\n".join(rows) + "\n")
    return path


def test_csv_folder_with_an_images_folder_is_recognised(csv_set):
    from scenecls.data.layout import INTEL_CLASSES, index_dataset

    write_csv(csv_set, [f"{n}.jpg,{n}" for n in range(6)])
    index = index_dataset(csv_set)
    assert index.layout == "csv" and index.classes == list(INTEL_CLASSES)


def test_csv_label_subsets_keep_the_intel_names(csv_set):
    from scenecls.data.layout import INTEL_CLASSES, index_dataset

    write_csv(csv_set, ["0.jpg,0", "2.jpg,2", "5.jpg,5"])
    index = index_dataset(csv_set)
    assert index.classes == list(INTEL_CLASSES)
    assert [INTEL_CLASSES[i] for i in index.splits["train"].labels] == ["buildings", "glacier", "street"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["0.jpg,0", "1.jpg,"], "train.csv:3: 1.jpg has an empty label"),
        (["0.jpg,0", "1.jpg,7x"], "train.csv:3: label '7x' is not a class number"),
        (["0.jpg,0", "../../../etc/passwd.jpg,1"], "lies outside"),
        (["0.jpg,0", "/etc/hosts.jpg,1"], "lies outside"),
    ],
)
def test_bad_csv_rows_are_refused_with_their_line(csv_set, rows, message):
    from scenecls.data.layout import index_dataset

    write_csv(csv_set, rows)
    with pytest.raises(DataError, match=message.replace(".", r"\.").replace("'", ".")):
        index_dataset(csv_set / "train.csv")


# ------------------------------------------------------------------------------ small ones


def test_long_errors_are_cut_at_a_boundary():
    from scenecls.errors import first_line

    message = "the weights do not fit; " + " ".join(f"layer_{i} expected shape (3, 3, 32)" for i in range(40))
    cut = first_line(ValueError(message), 120)
    assert len(cut) <= 122 and cut.endswith(" …")
    assert cut[:-2] == message[: len(cut) - 2]  # a prefix of the message ...
    assert message[len(cut) - 2] in " ;,."  # ... ending where a word ends


def test_an_error_line_that_introduces_a_list_is_cut_before_the_list():
    from scenecls.errors import first_line

    keras_style = "A total of 3 objects could not be loaded. Example error message for object <C>:\n\nshape"
    assert first_line(ValueError(keras_style)) == "A total of 3 objects could not be loaded."
    assert first_line(ValueError("Cannot read these:\na.jpg\nb.jpg")) == "Cannot read these"
    assert first_line(ValueError("ratio 1:2")) == "ratio 1:2"
    assert first_line(ValueError("no colon")) == "no colon"


def test_finetune_offers_only_the_fine_tuning_cache_options():
    """finetune has no phase 1, so no feature-cache copies; its fine-tuning uses the activation cache."""
    result = CliRunner().invoke(cli, ["finetune", "--help"])
    assert result.exit_code == 0
    assert "--cache-aug" not in result.output
    assert "--no-cache" in result.output and "--finetune-copies" in result.output
    assert "--cache-aug" in CliRunner().invoke(cli, ["train", "--help"]).output


def test_sweep_grid_values_run_once_and_negative_dense_is_usage():
    from scenecls.training.sweep import grid

    points = grid(["mobilenet_v2", "mobilenet_v2"], ["1", "1", "3"], [1, 1, 2])
    assert [p.name for p in points] == [
        "mobilenet_v2-d1-u1",
        "mobilenet_v2-d2-u1",
        "mobilenet_v2-d1-u3",
        "mobilenet_v2-d2-u3",
    ]
    result = CliRunner().invoke(cli, ["sweep", "--dense", "-1", "--dry-run"])
    assert result.exit_code == 2
    assert "--dense" in one_error_line(result)


def test_disk_full_while_training_keeps_the_saved_epochs(small_set, tmp_path, monkeypatch):
    from scenecls.classifier import load_model
    from scenecls.training import checkpoints

    real_save = checkpoints.save_model
    calls = {"n": 0}

    def save_then_fill_the_disk(model, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's checkpoint
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(model, path)

    monkeypatch.setattr(checkpoints, "save_model", save_then_fill_the_disk)
    project = tmp_path / "runs"
    result = train_cli(
        "--data", str(small_set), *TINY, "--epochs", "0", "--finetune-epochs", "3", "--unfreeze", "1",
        "--project", str(project),
    )  # fmt: skip
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "No space left on device" in line and "intact" in line
    run = project / "train"
    assert strict_json(run / "state.json")["status"] == "failed"
    assert load_model(run / "best.keras").output_shape == (None, 3)
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


SHARED_CACHE = Path(__file__).resolve().parents[2] / "shared" / "weights" / "keras-cache" / "models"


@pytest.mark.skipif(not SHARED_CACHE.is_dir(), reason="needs ../shared/weights (real MobileNetV2 weights)")
def test_quiet_imagenet_training_prints_nothing_on_stderr(small_set, tmp_path):
    """Keras warns that its 224-pixel file is loaded into another input size; with -q nothing shows."""
    keras_home = tmp_path / "keras"
    (keras_home / "models").mkdir(parents=True)
    for weights in SHARED_CACHE.glob("*.h5"):
        (keras_home / "models" / weights.name).symlink_to(weights)
    env = {**os.environ, "KERAS_HOME": str(keras_home), "SCENECLS_HOME": str(tmp_path / "home")}
    args = ["--data", str(small_set), "--backbone", "mobilenet_v2", "--weights", "imagenet",
            "--image-size", "64", "-b", "8", "--epochs", "1", "--finetune-epochs", "0",
            "--project", str(tmp_path / "runs")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "scenecls", "train", *args, "-q", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout)["status"] == "finished"


def test_quiet_sweep_still_prints_its_table_with_readable_headers():
    from scenecls.cli.sweep import _cell

    args = ["-q", "sweep", "--backbones", "mobilenet_v2", "--unfreeze", "1", "--dense", "1,1",
            "--image-size", "32", "--weights", "none", "--dry-run"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "unfrozen blocks" in result.stdout and "unfrozen_blocks" not in result.stdout
    assert result.stdout.count("mobilenet_v2-d1-u1") == 1
    assert _cell("seconds", 12.3456) == "12 s"


def test_fail_under_gate_exits_5_after_writing_outputs(small_set, tmp_path):
    project = tmp_path / "runs"
    args = ["--data", str(small_set), *TINY, "--epochs", "1", "--finetune-epochs", "0",
            "--project", str(project), "--format", "json"]  # fmt: skip
    low = train_cli(*args, "--fail-under", "1.0")
    assert low.exit_code == 5
    assert "below --fail-under 1" in low.stderr
    summary = json.loads(low.stdout)  # the results were printed ...
    assert (Path(summary["run_dir"]) / "metrics.json").is_file()  # ... and saved
    assert train_cli(*args, "--fail-under", "0").exit_code == 0
