"""What a cache entry is on disk, for the feature and the activation cache alike: one protocol.

An entry is a folder named for its key (a hash of everything that made it) under ``<cache>/<kind>/``,
holding ``train.npy``, ``val.npy`` and ``meta.json``; ``meta.json`` is its marker and records the key's
fields, the arrays' SHA-256 and whatever the kind adds (shapes, a scale). It is built in a staging
folder named for its process (``.<key>.<host>-<pid>.building``, :mod:`scenecls.files`) and renamed into
place whole, so a reader sees a whole entry or none; a build that was killed is removed by the next
build once its process is gone. Reading checks the fields and (unless just written) the checksums, so an
entry of another version, other options or damaged bytes is never misread: it is rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenecls.checksums import file_sha256
from scenecls.files import STAGING_MARKER, make_staging, remove_abandoned, staging_path
from scenecls.frozen_pass import DEFAULT_RUNTIME

if TYPE_CHECKING:
    import numpy as np

    from scenecls.data.augment import AugmentConfig
    from scenecls.data.layout import Split

BUILDING = "building"  # the staging kind of a build
META = "meta.json"
ARRAYS = ("train.npy", "val.npy")
ENTRY_FILES = frozenset({META, *ARRAYS})  # all an entry holds


@dataclass(frozen=True)
class CacheInputs:
    """What an entry is computed from, besides the model: the images of both splits at one size, the
    batch they are computed in, and the augmented copies of the training images (``copies`` of them,
    drawn from ``augment`` with ``seed``; ``augmentations`` their layers when made beforehand, so that
    several processes make the same ones), and the runtime of the frozen passes. A run's context gives
    them (see ``sources.py``)."""

    train: Split
    val: Split
    size: tuple[int, int]
    batch_size: int
    augment: AugmentConfig
    copies: int
    seed: int
    augmentations: list | None = field(default=None, compare=False)
    runtime: str = DEFAULT_RUNTIME  # what runs the frozen passes (see frozen_pass.py): part of the key


@contextlib.contextmanager
def building(folder: Path) -> Iterator[Path]:
    """Where to build the entry ``folder``: this process's staging folder beside it (abandoned builds
    removed first), removed when the block ends, whether or not :func:`publish` renamed it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(folder.parent, BUILDING, marked=False)
    staging = staging_path(folder.parent, folder.name, BUILDING)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def start(folder: Path) -> Path:
    """(Re)make this process's staging folder for ``folder``, empty; a second attempt starts afresh."""
    return make_staging(folder.parent, folder.name, BUILDING)


def publish(staging: Path, folder: Path, fields: dict[str, Any], **extra: Any) -> None:
    """Write the entry's ``meta.json`` (its fields, ``extra``, the arrays' checksums) and rename the
    staging folder into place; if another process published the same entry first, theirs stays."""
    meta = {
        **fields,
        **extra,
        "sha256": {name: file_sha256(staging / name) for name in ARRAYS},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (staging / META).write_text(json.dumps(meta, indent=2))
    (staging / STAGING_MARKER).unlink(missing_ok=True)  # an entry's marker is its meta.json
    with contextlib.suppress(OSError):  # published by another process first: theirs is as good
        staging.rename(folder)


def read_meta(folder: Path, fields: dict[str, Any], *, checksums: bool = True) -> dict[str, Any] | None:
    """The entry's ``meta.json`` if it was made with exactly ``fields`` and (``checksums``) its arrays
    are the bytes it recorded; None otherwise (missing, another version or options, damaged)."""
    try:
        meta = json.loads((folder / META).read_text())
        if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in fields.items()):
            return None
        for name in ARRAYS if checksums else ():
            if file_sha256(folder / name) != meta["sha256"][name]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


def mark_used(folder: Path) -> None:
    """Record that an entry was read (its ``meta.json``'s time), for clearing the least recently used."""
    with contextlib.suppress(OSError):  # a read-only cache is still a cache
        (folder / META).touch()


def open_arrays(
    staging: Path, dtype, train_shape: tuple[int, ...], val_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """An entry's ``train.npy`` and ``val.npy`` in ``staging``, memory-mapped for writing, their blocks
    reserved on the disk (see :func:`allocate`): both caches build their entries into these."""
    import numpy as np

    arrays = tuple(
        np.lib.format.open_memmap(staging / name, mode="w+", dtype=dtype, shape=shape)
        for name, shape in zip(ARRAYS, (train_shape, val_shape), strict=True)
    )
    for name in ARRAYS:
        allocate(staging / name)
    return arrays


def allocate(path: Path) -> None:
    """Reserve the blocks of a (sparse) memory-mapped file now: a disk that fills up later would kill
    the process with SIGBUS at a write into the map, where this fails with a plain ``ENOSPC``."""
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
