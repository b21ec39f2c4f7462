"""Downloading (resume, retry, checksum, HTTP errors) and safe extraction, against 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import tarfile
import zipfile

import pytest
from click.testing import CliRunner

from scenecls.cli import cli
from scenecls.data import fetch
from scenecls.data.archives import extract_archive
from scenecls.data.download import download, kaggle_credentials
from scenecls.data.fetch import fetch_dataset
from scenecls.errors import DataError, DownloadError
from tests.conftest import intel_like_zip, make_zip, write_class_folders, zip_of  # noqa: F401

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ download


def test_download_streams_and_verifies(http_server, tmp_path):
    base, state = http_server
    state.files["/data.zip"] = PAYLOAD
    target = download(f"{base}/data.zip", tmp_path / "data.zip", sha256=sha(PAYLOAD))
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.zip.part").exists()


def test_interrupted_download_resumes_on_next_run(http_server, tmp_path):
    base, state = http_server
    state.files["/data.zip"] = PAYLOAD
    state.cut_after["/data.zip"] = 300_000
    with pytest.raises(DownloadError, match="run the command again to resume"):
        download(f"{base}/data.zip", tmp_path / "data.zip", retries=0)
    part = tmp_path / "data.zip.part"
    assert part.stat().st_size == 300_000
    download(f"{base}/data.zip", tmp_path / "data.zip", retries=0)
    assert (tmp_path / "data.zip").read_bytes() == PAYLOAD
    assert state.requests[-1]["range"] == "bytes=300000-"


def test_connection_cut_is_retried_from_where_it_stopped(http_server, tmp_path):
    base, state = http_server
    state.files["/data.zip"] = PAYLOAD
    state.cut_after["/data.zip"] = 123_456
    download(f"{base}/data.zip", tmp_path / "data.zip", retries=2, backoff=0)
    assert (tmp_path / "data.zip").read_bytes() == PAYLOAD
    assert [r["range"] for r in state.requests] == [None, "bytes=123456-"]


def test_server_that_ignores_range_restarts_cleanly(http_server, tmp_path):
    base, state = http_server
    state.files["/data.zip"] = PAYLOAD
    state.ignore_range = True
    (tmp_path / "data.zip.part").write_bytes(b"stale bytes from another file")
    download(f"{base}/data.zip", tmp_path / "data.zip")
    assert (tmp_path / "data.zip").read_bytes() == PAYLOAD


def test_complete_part_file_is_accepted_on_416(http_server, tmp_path):
    base, state = http_server
    state.files["/data.zip"] = PAYLOAD
    (tmp_path / "data.zip.part").write_bytes(PAYLOAD)
    download(f"{base}/data.zip", tmp_path / "data.zip", sha256=sha(PAYLOAD))
    assert (tmp_path / "data.zip").read_bytes() == PAYLOAD


def test_checksum_mismatch_is_an_error_and_removes_the_file(http_server, tmp_path):
    base, state = http_server
    state.files["/data.zip"] = PAYLOAD
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(f"{base}/data.zip", tmp_path / "data.zip", sha256="0" * 64)
    assert not (tmp_path / "data.zip").exists()


@pytest.mark.parametrize(
    ("code", "advice"), [(404, "--from"), (403, "KAGGLE_USERNAME"), (401, "kaggle.json")]
)
def test_http_errors_say_how_to_fix_them(http_server, tmp_path, code, advice):
    base, state = http_server
    state.status["/data.zip"] = code
    with pytest.raises(DownloadError, match=advice) as info:
        download(f"{base}/data.zip", tmp_path / "data.zip", backoff=0)
    assert str(code) in str(info.value)
    assert len(state.requests) == 1  # client errors are not retried


def test_server_errors_are_retried_then_reported(http_server, tmp_path):
    base, state = http_server
    state.status["/data.zip"] = 503
    with pytest.raises(DownloadError, match="after 3 attempts"):
        download(f"{base}/data.zip", tmp_path / "data.zip", retries=2, backoff=0)
    assert len(state.requests) == 3


def test_credentials_go_to_the_host_asked_but_not_through_redirects(http_server, tmp_path):
    base, state = http_server
    state.files["/storage/data.zip"] = PAYLOAD
    state.redirects["/api/data.zip"] = f"{base}/storage/data.zip"
    download(f"{base}/api/data.zip", tmp_path / "data.zip", auth=("user", "key"))
    assert state.requests[0]["auth"].startswith("Basic ")
    assert state.requests[1]["auth"] is None


def test_kaggle_credentials_from_env_and_file(monkeypatch, tmp_path):
    assert kaggle_credentials() is None
    config = tmp_path / "kaggle"
    config.mkdir()
    (config / "kaggle.json").write_text(json.dumps({"username": "u", "key": "k"}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    assert kaggle_credentials() == ("u", "k")
    monkeypatch.setenv("KAGGLE_USERNAME", "env-user")
    monkeypatch.setenv("KAGGLE_KEY", "env-key")
    assert kaggle_credentials() == ("env-user", "env-key")


# ------------------------------------------------------------------------------------- extract


@pytest.mark.parametrize(
    "evil", ["../evil.txt", "a/../../evil.txt", "/tmp/evil.txt", "..\\evil.txt", "C:/evil.txt"]
)
def test_zip_slip_is_refused_before_anything_is_written(tmp_path, evil):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"ok/fine.txt": b"x", evil: b"boom"}))
    dest = tmp_path / "out" / "inner"
    dest.mkdir(parents=True)
    with pytest.raises(DataError, match="refusing"):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "out" / "evil.txt").exists()


def test_zip_symlink_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"ok.txt": b"x"}, symlinks={"link": "/etc/passwd"}))
    with pytest.raises(DataError, match="symbolic link"):
        extract_archive(archive, tmp_path / "out")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_tar_links_and_devices_are_refused(tmp_path, kind):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("data/thing")
        info.type = kind
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="refusing"):
        extract_archive(archive, tmp_path / "out")


def test_tar_gz_extracts(tmp_path):
    tree = write_class_folders(tmp_path / "src", 2, size=8)
    archive = tmp_path / "a.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="set")
    extract_archive(archive, tmp_path / "out")
    assert len(list((tmp_path / "out" / "set" / "alpha").iterdir())) == 2


def test_archive_bomb_cap(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"big.bin": b"\0" * 10_000}))
    with pytest.raises(DataError, match="limit"):
        extract_archive(archive, tmp_path / "out", max_bytes=5_000)


def test_not_an_archive(tmp_path):
    bogus = tmp_path / "a.zip"
    bogus.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="not a zip or tar"):
        extract_archive(bogus, tmp_path / "out")


# --------------------------------------------------------------------------------- fetch_dataset


def test_intel_layout_is_normalised(tmp_path):
    archive = tmp_path / "intel.zip"
    archive.write_bytes(intel_like_zip(tmp_path))
    result = fetch_dataset(tmp_path / "data", source=archive)
    root = tmp_path / "data"
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "pred",
        "test",
        "train",
    ]
    assert result.counts["train"] == {"alpha": 3, "beta": 3, "gamma": 3}
    assert result.counts["test"] == {"alpha": 2, "beta": 2, "gamma": 2}
    assert result.counts["pred"] == {"(unlabelled)": 2}
    assert json.loads((root / fetch.MARKER).read_text())["source"] == str(archive)


def test_fetch_is_idempotent_and_force_replaces(tmp_path):
    archive = tmp_path / "intel.zip"
    archive.write_bytes(intel_like_zip(tmp_path))
    dest = tmp_path / "data"
    fetch_dataset(dest, source=archive)
    (dest / "train" / "alpha" / "mine.txt").write_text("user file")
    again = fetch_dataset(dest, source=archive)
    assert again.already_present
    assert (dest / "train" / "alpha" / "mine.txt").exists()
    forced = fetch_dataset(dest, source=archive, force=True)
    assert not forced.already_present
    assert not (dest / "train" / "alpha" / "mine.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".data.")] == []


def test_interrupted_extraction_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    archive = tmp_path / "intel.zip"
    archive.write_bytes(intel_like_zip(tmp_path))
    dest = tmp_path / "data"

    calls = {"n": 0}
    real_open = zipfile.ZipFile.open

    def failing_open(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", failing_open)
    with pytest.raises(KeyboardInterrupt):
        fetch_dataset(dest, source=archive)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".data")] == []
    monkeypatch.setattr(zipfile.ZipFile, "open", real_open)
    assert fetch_dataset(dest, source=archive).counts["train"]["alpha"] == 3


def test_truncated_archive_is_a_clear_error_and_keeps_old_data(tmp_path):
    good = tmp_path / "good.zip"
    good.write_bytes(intel_like_zip(tmp_path))
    dest = tmp_path / "data"
    fetch_dataset(dest, source=good)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError):
        fetch_dataset(dest, source=bad, force=True)
    assert len(list((dest / "train" / "alpha").iterdir())) == 3


def test_fetch_from_extracted_folder_copies(tmp_path):
    source = write_class_folders(tmp_path / "mine" / "inner", 2, size=8)
    result = fetch_dataset(tmp_path / "data", source=source.parent)
    assert result.counts == {"all": {"alpha": 2, "beta": 2, "gamma": 2}}
    assert (source / "alpha").is_dir()  # the user's folder is untouched


def test_fetch_downloads_and_removes_the_archive(http_server, tmp_path):
    base, state = http_server
    body = intel_like_zip(tmp_path)
    state.files["/intel.zip"] = body
    dest = tmp_path / "data"
    result = fetch_dataset(dest, url=f"{base}/intel.zip", sha256=sha(body))
    assert result.counts["train"]["beta"] == 3
    assert list((tmp_path / ".downloads").iterdir()) == []


def test_archive_without_images_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"readme.txt": b"hello"}))
    with pytest.raises(DataError, match="no images"):
        fetch_dataset(tmp_path / "data", source=archive)
    assert not (tmp_path / "data").exists()


# ------------------------------------------------------------------------------------------ CLI


def test_cli_fetch_json_summary(tmp_path):
    archive = tmp_path / "intel.zip"
    archive.write_bytes(intel_like_zip(tmp_path))
    dest = tmp_path / "data"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["fetch-data", "--from", str(archive), "--dest", str(dest), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["counts"]["train"]["gamma"] == 3 and data["already_present"] is False
    again = runner.invoke(cli, ["-q", "fetch-data", "--from", str(archive), "--dest", str(dest)])
    assert again.exit_code == 0 and again.stderr == ""
    assert "gamma" in again.stdout  # -q silences progress, never the results


def test_cli_fetch_errors_are_one_line(http_server, tmp_path):
    base, _ = http_server
    result = CliRunner().invoke(
        cli, ["fetch-data", "--url", f"{base}/missing.zip", "--dest", str(tmp_path / "d")]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "404" in lines[0]


def test_cli_fetch_zip_slip_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"../../evil.jpg": b"x"}))
    result = CliRunner().invoke(cli, ["fetch-data", "--from", str(archive), "--dest", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "outside the archive" in result.stderr
    assert not (tmp_path / "d").exists()
