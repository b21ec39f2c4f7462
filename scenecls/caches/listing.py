"""What the caches hold on disk, and clearing them.

Every cache entry can be rebuilt, so none is precious, but they add up: an activation entry is 100-300 MB
and a new cache version (or other weights, images or options) leaves the old entries unused. This module
lists the entries under the cache folder with their size, age and state, and removes the ones asked for,
never a build in progress.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from scenecls.caches import activations, features, store, targets
from scenecls.data.images import SCAN_CACHE_VERSION
from scenecls.files import STAGING_MARKER, is_abandoned, is_staging

KINDS = ("features", "activations", "targets", "scans")
# An entry in one of these states is not used by this version of scenecls and can go.
UNUSABLE = ("stale", "damaged", "abandoned")
# Anything under the cache folder that is not an entry this tool made: listed, never removed.
FOREIGN = "foreign"
VERSIONS = {
    "features": features.CACHE_VERSION,
    "activations": activations.CACHE_VERSION,
    "targets": targets.CACHE_VERSION,
}
ENTRY_NAME = re.compile(r"^[0-9a-f]{24}$")  # a feature, activation or target entry: its key
ENTRY_FILES = store.ENTRY_FILES | {STAGING_MARKER}
SCAN_NAME = re.compile(r"^[0-9a-f]{1,64}\.json$")  # named for the scanned folder's hash
# Feature staging before it was named for its process: ``.<key>.<mkdtemp's 8 characters>``.


@dataclass
class CacheEntry:
    kind: str  # features, activations or scans
    path: Path
    bytes: int
    created: float  # seconds since the epoch
    used: float  # when it was last read (or made)
    state: str  # current, stale (another cache version), damaged, building, abandoned or foreign
    backbone: str | None = None
    detail: str = ""  # the cut of an activation entry, the input size of a feature entry

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def list_entries(
    root: Path, kinds: Iterable[str] = KINDS, *, unusable: bool = False, unused_for: float | None = None
) -> list[CacheEntry]:
    """The entries of ``root`` (the cache folder), least recently used first; with ``unusable`` only
    those this version cannot use (:data:`UNUSABLE`), with ``unused_for`` only those not read for that
    many seconds. Links, and anything whose name and marker do not say it is an entry, are listed as
    :data:`FOREIGN` (a kind's folder that is a link, as one such entry: it is never looked into)."""
    entries: list[CacheEntry] = []
    for kind in kinds:
        folder = root / kind
        if folder.is_symlink():
            entries.append(_foreign(kind, folder))
            continue
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_symlink():
                entries.append(_foreign(kind, path))
            else:
                entry = _scan_entry(path) if kind == "scans" else _folder_entry(kind, path)
                if entry is not None:
                    entries.append(entry)
    if unusable:
        entries = [e for e in entries if e.state in UNUSABLE]
    if unused_for is not None:
        entries = [e for e in entries if time.time() - e.used > unused_for]
    return sorted(entries, key=lambda e: e.used)


def remove_entries(entries: Iterable[CacheEntry]) -> tuple[list[CacheEntry], int]:
    """Delete ``entries`` except builds in progress and anything not a cache entry; ``(removed, bytes
    freed)``. Never through a link.

    An entry in use by a running training stays readable to it: its files are memory-mapped, and an
    unlinked file lives on until it is unmapped.
    """
    removed, freed = [], 0
    for entry in entries:
        if entry.state in ("building", FOREIGN) or entry.path.is_symlink():
            continue
        if entry.path.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
        if not entry.path.exists():
            removed.append(entry)
            freed += entry.bytes
    return removed, freed


def _foreign(kind: str, path: Path) -> CacheEntry:
    try:
        when = path.lstat().st_mtime
    except OSError:
        when = 0.0
    return CacheEntry(kind, path, 0, when, when, FOREIGN, detail="not a cache entry")


def _folder_entry(kind: str, path: Path) -> CacheEntry | None:
    if not path.is_dir():
        return _foreign(kind, path)
    if path.name.startswith("."):  # a staging folder: a build in progress or one that was killed
        if is_staging(path, store.BUILDING, marked=False):
            state = "abandoned" if is_abandoned(path, store.BUILDING) else "building"
        else:
            return _foreign(kind, path)
        size, created = _size(path), path.stat().st_mtime
        return CacheEntry(kind, path, size, created, created, state)
    if not ENTRY_NAME.match(path.name) or not _holds_only_ours(path):
        return _foreign(kind, path)
    size, created = _size(path), path.stat().st_mtime
    try:
        meta = json.loads((path / "meta.json").read_text())
        used = (path / "meta.json").stat().st_mtime
    except (OSError, ValueError):
        return CacheEntry(kind, path, size, created, created, "damaged")
    if not isinstance(meta, dict):
        return CacheEntry(kind, path, size, created, created, "damaged")
    state = "current" if meta.get("version") == VERSIONS[kind] else "stale"
    if kind == "targets":
        detail = f"teacher {meta.get('teacher_name') or '?'}, {meta.get('count')} images"
    elif kind == "activations":
        detail = f"cut {meta.get('cut')}, {meta.get('copies')} cop{'y' if meta.get('copies') == 1 else 'ies'}"
    else:
        detail = "x".join(str(s) for s in meta.get("size") or []) or ""
    if meta.get("runtime"):  # built on another runtime than TensorFlow (--cache-runtime)
        detail = f"{detail}, {meta['runtime']}" if detail else str(meta["runtime"])
    return CacheEntry(kind, path, size, created, used, state, meta.get("backbone"), detail)


def _holds_only_ours(folder: Path) -> bool:
    """An entry's marker is its ``meta.json``; one without it (damaged) may hold nothing but the files
    an entry is made of."""
    try:
        names = {entry.name for entry in folder.iterdir()}
    except OSError:
        return False
    return "meta.json" in names or names <= ENTRY_FILES


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def _scan_entry(path: Path) -> CacheEntry | None:
    if not path.is_file() or not SCAN_NAME.match(path.name):
        return _foreign("scans", path)
    stat = path.stat()
    try:
        state = "current" if json.loads(path.read_text()).get("version") == SCAN_CACHE_VERSION else "stale"
    except (OSError, ValueError, AttributeError):
        state = "damaged"
    return CacheEntry("scans", path, stat.st_size, stat.st_mtime, stat.st_mtime, state)
