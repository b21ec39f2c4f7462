"""``scenecls cache``: entries listed with their state, unusable ones cleared, builds in progress kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from scenecls import files
from scenecls.caches import activations, features
from scenecls.caches.listing import list_entries
from scenecls.caches.store import mark_used
from scenecls.cli import cli
from scenecls.data.images import SCAN_CACHE_VERSION
from scenecls.progress import NullReporter


def _entry(root: Path, kind: str, name: str, meta: dict | None, size: int = 1000) -> Path:
    folder = root / kind / name
    folder.mkdir(parents=True)
    (folder / "train.npy").write_bytes(b"\0" * size)
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _abandoned_name(key: str) -> str:
    """The staging name a build of this host would have, for a process that has ended."""
    mine = files.staging_path(Path(), key, "building").name  # .<key>.<host>-<pid>.building
    return mine.replace(f"-{os.getpid()}.building", f"-{_dead_pid()}.building")


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def cache(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("SCENECLS_HOME", str(home))
    root = home / "cache"
    current = {
        "version": activations.CACHE_VERSION,
        "backbone": "mobilenetv2",
        "cut": "block_16",
        "copies": 2,
    }
    made = {
        "current": _entry(root, "activations", "a" * 24, current, 5000),
        "stale": _entry(root, "activations", "b" * 24, {**current, "version": 1}, 7000),
        "damaged": _entry(root, "features", "c" * 24, None, 300),
        "features": _entry(
            root, "features", "d" * 24, {"version": features.CACHE_VERSION, "size": [150, 150]}
        ),
        "building": _entry(
            root, "activations", files.staging_path(Path(), "e" * 24, "building").name, None, 200
        ),
        "abandoned": _entry(root, "activations", _abandoned_name("f" * 24), None, 400),
    }
    scans = root / "scans"
    scans.mkdir()
    (scans / "0123.json").write_text(json.dumps({"version": SCAN_CACHE_VERSION, "files": {}}))
    made["scan"] = scans / "0123.json"
    return root, made


def test_entries_are_listed_with_their_state(cache):
    root, made = cache
    states = {e.path: e.state for e in list_entries(root)}
    assert states == {
        made["current"]: "current",
        made["stale"]: "stale",
        made["damaged"]: "damaged",
        made["features"]: "current",
        made["building"]: "building",
        made["abandoned"]: "abandoned",
        made["scan"]: "current",
    }
    result = CliRunner().invoke(cli, ["cache", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert rows["a" * 24]["bytes"] > 5000 and rows["a" * 24]["detail"] == "cut block_16, 2 copies"


def test_clear_stale_removes_only_what_cannot_be_used(cache):
    _, made = cache
    result = CliRunner().invoke(cli, ["cache", "--clear", "--stale", "--format", "json"])
    assert result.exit_code == 0, result.output
    removed = {Path(r["path"]) for r in json.loads(result.stdout)}
    assert removed == {made["stale"], made["damaged"], made["abandoned"]}
    for name in ("stale", "damaged", "abandoned"):
        assert not made[name].exists()
    for name in ("current", "features", "building", "scan"):
        assert made[name].exists()
    assert "3 cache entries" in result.stderr and "freed" in result.stderr


def test_clear_everything_leaves_builds_in_progress(cache):
    root, made = cache
    result = CliRunner().invoke(cli, ["cache", "--clear"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (root / "activations").iterdir()] == [made["building"].name]
    assert not any((root / "features").iterdir()) and not any((root / "scans").iterdir())
    assert "1 in use by a build left alone" in result.stderr


def test_older_than_counts_from_the_last_use(cache):
    _, made = cache
    long_ago = time.time() - 10 * 86400
    for name in ("current", "features"):
        os.utime(made[name] / "meta.json", (long_ago, long_ago))
    mark_used(made["features"])  # read again today
    args = ["--older-than", "7", "--kind", "activations", "--kind", "features", "--format", "json"]
    result = CliRunner().invoke(cli, ["cache", *args])
    assert result.exit_code == 0, result.output
    assert [Path(r["path"]) for r in json.loads(result.stdout)] == [made["current"]]
    csv = CliRunner().invoke(cli, ["cache", "--format", "csv", "--kind", "scans"])
    assert csv.stdout.splitlines()[0] == "kind,path,bytes,created,used,state,backbone,detail"


def test_an_empty_cache_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SCENECLS_HOME", str(tmp_path / "nothing"))
    result = CliRunner().invoke(cli, ["cache"])
    assert result.exit_code == 0 and "No cache entries" in result.stderr and result.stdout == ""


def test_clear_never_deletes_through_a_link_or_what_is_not_an_entry(tmp_path, monkeypatch):
    """A kind's folder that is a link to another folder, a linked entry, and folders or files whose
    name and marker do not say they are entries are listed as not cache entries and left, with a line
    that says so (not "in use by a build")."""
    home = tmp_path / "home"
    monkeypatch.setenv("SCENECLS_HOME", str(home))
    root = home / "cache"
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "no_meta_folder").mkdir(parents=True)
    (elsewhere / "no_meta_folder" / "thesis.tex").write_text("keep")
    (elsewhere / "settings.json").write_text("{not json")
    root.mkdir(parents=True)
    (root / "features").symlink_to(elsewhere, target_is_directory=True)
    (root / "scans").symlink_to(elsewhere, target_is_directory=True)
    acts = root / "activations"
    acts.mkdir()
    (acts / ("a" * 24)).symlink_to(elsewhere / "no_meta_folder", target_is_directory=True)
    (acts / "my_notes").mkdir()
    (acts / "my_notes" / "n.txt").write_text("keep")
    (acts / ("b" * 24)).mkdir()  # an entry's name, but holding a file no entry has
    (acts / ("b" * 24) / "mine.txt").write_text("keep")
    damaged = _entry(root, "activations", "c" * 24, None, 10)  # ours, its meta.json lost

    states = {e.path.name: e.state for e in list_entries(root)}
    assert states == {
        "features": "foreign", "scans": "foreign", "a" * 24: "foreign", "my_notes": "foreign",
        "b" * 24: "foreign", "c" * 24: "damaged",
    }  # fmt: skip
    result = CliRunner().invoke(cli, ["cache", "--clear", "--stale"])
    assert result.exit_code == 0, result.output
    assert not damaged.exists()
    for kept in (
        elsewhere / "no_meta_folder" / "thesis.tex", elsewhere / "settings.json",
        acts / "my_notes" / "n.txt", acts / ("b" * 24) / "mine.txt",
    ):  # fmt: skip
        assert kept.exists(), kept
    result = CliRunner().invoke(cli, ["cache", "--clear"])
    assert "5 not a cache entry left alone" in result.stderr and "in use by a build" not in result.stderr
    assert (elsewhere / "no_meta_folder" / "thesis.tex").exists() and (acts / ("a" * 24)).is_symlink()
    listing = CliRunner().invoke(cli, ["cache"])
    assert "not a cache entry" in listing.output


def test_both_caches_make_their_entries_by_the_umask(tmp_path):
    """Feature and activation staging are made alike (mkdir, the umask), so that a SCENECLS_HOME shared
    by a group works for both; the feature cache's was 0700 (mkdtemp)."""

    old = os.umask(0o022)
    try:
        made = files.make_staging(tmp_path, "k", "building")
        folder = tmp_path / ("d" * 24)
        fields = {"version": features.CACHE_VERSION}
        with features.EntryBuild(folder, fields, 1, 2, 0, 3, reporter=NullReporter()) as build:
            build.finish()
    finally:
        os.umask(old)
    assert made.stat().st_mode & 0o777 == 0o755
    assert folder.stat().st_mode & 0o777 == 0o755
