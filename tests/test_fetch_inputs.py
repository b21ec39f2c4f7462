"""fetch-data with hostile and broken inputs: each ends in a one-line error and leaves every file that
was already there as it was: what it may replace, credentials, downloads, archives, folders."""

from __future__ import annotations

import errno
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from scenecls import files
from scenecls.cli import cli
from scenecls.data import archives, fetch
from scenecls.data.archives import copy_folder, extract_archive
from scenecls.data.download import download, is_kaggle_url
from scenecls.data.fetch import fetch_dataset
from scenecls.errors import DataError, DownloadError
from scenecls.units import byte_size
from tests.conftest import make_zip, one_error_line, write_class_folders

PAYLOAD = bytes(range(256)) * 4096


def fetch_cli(*args: str):
    return CliRunner().invoke(cli, ["fetch-data", *args])


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
        (["--url", "http://[::1"], "is not a valid address"),
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
