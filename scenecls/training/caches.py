"""What the caches hold on disk, and clearing them.

Every cache entry can be rebuilt, so none is precious, but they add up: an activation entry is 100-300 MB
and a new cache version (or other weights, images or options) leaves the old entries unused. This module
lists the entries under the cache folder with their size, age and state, and removes the ones asked for,
never a build in progress.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from scenecls.data.images import SCAN_CACHE_VERSION

KINDS = ("features", "activations", "scans")
# An entry in one of these states is not used by this version of scenecls and can go.
UNUSABLE = ("stale", "damaged", "abandoned")


@dataclass
class CacheEntry:
    kind: str  # features, activations or scans
    path: Path
    bytes: int
    created: float  # seconds since the epoch
    used: float  # when it was last read (or made)
    state: str  # current, stale (another cache version), damaged, building or abandoned
    backbone: str | None = None
    detail: str = ""  # the cut of an activation entry, the input size of a feature entry

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def list_entries(
    root: Path, kinds: Iterable[str] = KINDS, *, unusable: bool = False, unused_for: float | None = None
) -> list[CacheEntry]:
    """The entries of ``root`` (the cache folder), least recently used first; with ``unusable`` only
    those this version cannot use (:data:`UNUSABLE`), with ``unused_for`` only those not read for that
    many seconds."""
    entries: list[CacheEntry] = []
    for kind in kinds:
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            entry = _scan_entry(path) if kind == "scans" else _folder_entry(kind, path)
            if entry is not None:
                entries.append(entry)
    if unusable:
        entries = [e for e in entries if e.state in UNUSABLE]
    if unused_for is not None:
        entries = [e for e in entries if time.time() - e.used > unused_for]
    return sorted(entries, key=lambda e: e.used)


def remove_entries(entries: Iterable[CacheEntry]) -> tuple[list[CacheEntry], int]:
    """Delete ``entries`` except builds in progress; ``(removed, bytes freed)``.

    An entry in use by a running training stays readable to it: its files are memory-mapped, and an
    unlinked file lives on until it is unmapped.
    """
    removed, freed = [], 0
    for entry in entries:
        if entry.state == "building":
            continue
        if entry.path.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
        if not entry.path.exists():
            removed.append(entry)
            freed += entry.bytes
    return removed, freed


def mark_used(folder: Path) -> None:
    """Record that an entry was read (its ``meta.json``'s time), for clearing the least recently used."""
    with contextlib.suppress(OSError):  # a read-only cache is still a cache
        (folder / "meta.json").touch()


def _folder_entry(kind: str, path: Path) -> CacheEntry | None:
    from scenecls.training import activations, features  # they mark entries used through this module

    if not path.is_dir():
        return None
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    created = path.stat().st_mtime
    if path.name.startswith("."):  # a staging folder: a build in progress or one that was killed
        return CacheEntry(kind, path, size, created, created, _staging_state(kind, path))
    version = activations.CACHE_VERSION if kind == "activations" else features.CACHE_VERSION
    try:
        meta = json.loads((path / "meta.json").read_text())
        used = (path / "meta.json").stat().st_mtime
    except (OSError, ValueError):
        return CacheEntry(kind, path, size, created, created, "damaged")
    if not isinstance(meta, dict):
        return CacheEntry(kind, path, size, created, created, "damaged")
    state = "current" if meta.get("version") == version else "stale"
    if kind == "activations":
        detail = f"cut {meta.get('cut')}, {meta.get('copies')} cop{'y' if meta.get('copies') == 1 else 'ies'}"
    else:
        detail = "x".join(str(s) for s in meta.get("size") or []) or ""
    return CacheEntry(kind, path, size, created, used, state, meta.get("backbone"), detail)


def _staging_state(kind: str, path: Path) -> str:
    from scenecls.training import activations

    if kind == "activations" and path.name.endswith(".building"):
        return "abandoned" if activations.is_abandoned(path) else "building"
    # the feature cache's staging folders do not name their process: a day old is abandoned
    age = time.time() - path.stat().st_mtime
    return "abandoned" if age > activations.ABANDONED_AFTER else "building"


def _scan_entry(path: Path) -> CacheEntry | None:
    if not path.is_file() or path.suffix != ".json":
        return None
    stat = path.stat()
    try:
        state = "current" if json.loads(path.read_text()).get("version") == SCAN_CACHE_VERSION else "stale"
    except (OSError, ValueError, AttributeError):
        state = "damaged"
    return CacheEntry("scans", path, stat.st_size, stat.st_mtime, stat.st_mtime, state)
