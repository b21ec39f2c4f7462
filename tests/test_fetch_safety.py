"""fetch-data where other processes and other people's files meet it: two runs into one destination take
turns, folders beside the destination that only look like staging are never removed, and a download
file planted beside the destination is never trusted."""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scenecls import files
from scenecls.data import fetch
from scenecls.data.download import download
from scenecls.data.fetch import fetch_dataset
from scenecls.errors import DataError, DownloadError
from tests.conftest import intel_like_zip, write_class_folders, zip_of

PAYLOAD = bytes(range(256)) * 4096


@pytest.fixture
def intel_zip(tmp_path) -> Path:
    archive = tmp_path / "intel.zip"
    archive.write_bytes(intel_like_zip(tmp_path))
    return archive


def fetch_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scenecls", "fetch-data", *args, "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )


def wait_for_line(stream, needle: str, timeout: float = 60) -> str:
    """Read ``stream`` until a line holds ``needle``; everything read so far."""
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.5)
        if ready:
            line = stream.readline()
            if not line:
                break
            seen += line
            if needle in line:
                return seen
    raise AssertionError(f"no line with {needle!r} in {seen!r}")


def dead_pid() -> int:
    """The process id of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(done.stdout)


# ------------------------------------------------------------------------------- one destination, two runs


def test_a_second_fetch_into_the_same_folder_waits_for_the_first(tmp_path, intel_zip):
    """While a fetch holds the destination's lock, another waits (and says so) instead of racing it;
    once the lock is free it goes on, and no lock file is left behind."""
    dest = tmp_path / "mine"
    with files.locked(fetch._lock_path(dest, in_place=False)):
        second = fetch_process("--from", str(intel_zip), "--dest", str(dest))
        wait_for_line(second.stderr, "Waiting for another fetch-data into")
        time.sleep(0.5)
        assert second.poll() is None and not dest.exists()
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert json.loads(out)["counts"]["train"] == {"alpha": 3, "beta": 3, "gamma": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["intel-src", "intel.zip", "mine"]


def test_two_fetches_started_together_both_leave_the_whole_data_set(tmp_path):
    """Two processes 0.2 s apart into one --dest, --force: each run places or finds the whole data set,
    and what is left is one whole data set, with no staging beside it."""
    tree = tmp_path / "src"
    write_class_folders(tree / "seg_train" / "seg_train", 1000, size=16)
    write_class_folders(tree / "seg_test" / "seg_test", 30, size=16, seed=5)
    archive = tmp_path / "big.zip"
    archive.write_bytes(zip_of(tree))
    dest = tmp_path / "mine"
    first = fetch_process("--from", str(archive), "--dest", str(dest), "--force")
    time.sleep(0.2)
    second = fetch_process("--from", str(archive), "--dest", str(dest), "--force")
    for process in (first, second):
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err
        assert json.loads(out)["counts"]["train"] == {"alpha": 1000, "beta": 1000, "gamma": 1000}
    assert fetch.count_images(dest) == {
        "train": {"alpha": 1000, "beta": 1000, "gamma": 1000},
        "test": {"alpha": 30, "beta": 30, "gamma": 30},
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zip", "mine", "src"]


# ------------------------------------------------------------------------ folders beside the destination


def test_folders_beside_dest_that_look_like_staging_are_left_alone(tmp_path, intel_zip):
    """A user's ``.mine.2019.old/`` and ``.mine.draft.partial/`` survive both a refusal and a fetch; only
    staging a killed fetch-data left (its name and marker, its process gone) is removed."""
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    keep = [tmp_path / ".mine.2019.old", tmp_path / ".mine.draft.partial", tmp_path / ".mine.x-1.fetching"]
    for folder in keep:
        folder.mkdir()
        (folder / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="nothing was changed"):
        fetch_dataset(dest, source=intel_zip, force=True)
    assert all((folder / "precious.txt").read_text() == "keep me" for folder in keep)

    abandoned = tmp_path / f".mine.{files.host_name()}-{dead_pid()}.fetching"
    abandoned.mkdir()
    (abandoned / files.STAGING_MARKER).write_text("")
    (abandoned / "data").mkdir()
    (dest / "notes.txt").unlink()
    fetch_dataset(dest, source=intel_zip)
    assert not abandoned.exists()
    assert all((folder / "precious.txt").read_text() == "keep me" for folder in keep)


def test_a_living_processes_staging_is_not_removed(tmp_path):
    living = tmp_path / f".mine.{files.host_name()}-{os.getpid()}.fetching"
    living.mkdir()
    (living / files.STAGING_MARKER).write_text("")
    assert files.remove_abandoned(tmp_path, "fetching", "mine") == []
    assert living.exists()


def test_a_link_named_like_staging_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    link = tmp_path / f".mine.{files.host_name()}-{dead_pid()}.fetching"
    link.symlink_to(target)
    assert files.remove_abandoned(tmp_path, "fetching", "mine") == []
    assert (target / "precious.txt").exists() and link.is_symlink()


# -------------------------------------------------------------------------------------- planted downloads


def test_a_download_planted_beside_dest_is_not_trusted(http_server, tmp_path, intel_zip):
    """A file placed beforehand under the download's name is fetched afresh from the URL, never used."""
    base, state = http_server
    state.files["/data.zip"] = intel_zip.read_bytes()
    url = f"{base}/data.zip"
    planted_tree = tmp_path / "planted"
    write_class_folders(planted_tree / "train", 2, classes=("evil",), size=16)
    downloads = tmp_path / ".downloads"
    downloads.mkdir()
    name = "download-" + hashlib.sha1(url.encode()).hexdigest()[:12]
    (downloads / name).write_bytes(zip_of(planted_tree))
    result = fetch_dataset(tmp_path / "d", url=url, keep_archive=True)
    assert len(state.requests) == 1
    assert "evil" not in result.counts["train"] and result.counts["train"]["alpha"] == 3
    # The download this tool finished is reused by the next run (no request), with its record.
    fetch_dataset(tmp_path / "e", url=url)
    assert len(state.requests) == 1


def test_a_finished_download_changed_after_its_record_is_fetched_again(http_server, tmp_path):
    base, state = http_server
    state.files["/data.bin"] = PAYLOAD
    target = tmp_path / "data.bin"
    download(f"{base}/data.bin", target)
    target.write_bytes(b"x" * len(PAYLOAD))  # same length, other bytes
    download(f"{base}/data.bin", target)
    assert target.read_bytes() == PAYLOAD and len(state.requests) == 2


def test_bytes_past_the_record_of_a_partial_download_are_cut_off(http_server, tmp_path):
    """After a kill, the ``.part`` may hold bytes the record does not vouch for (written after its last
    update, or planted): they are cut off and fetched again, never spliced in."""
    base, state = http_server
    state.files["/data.bin"] = PAYLOAD
    state.cut_after["/data.bin"] = 300_000
    target = tmp_path / "data.bin"
    with pytest.raises(DownloadError):
        download(f"{base}/data.bin", target, retries=0)
    part = tmp_path / "data.bin.part"
    record = json.loads((tmp_path / "data.bin.part.json").read_text())
    assert record["bytes"] == part.stat().st_size == 300_000
    with open(part, "ab") as handle:
        handle.write(b"planted" * 1000)
    download(f"{base}/data.bin", target)
    assert target.read_bytes() == PAYLOAD
    assert state.requests[-1]["range"] == "bytes=300000-"
