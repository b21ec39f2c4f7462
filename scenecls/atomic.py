"""Replace files in one step, so that a crash or Ctrl-C leaves either the old file or the new one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``target`` to write to; it replaces ``target`` when the block succeeds.

    ``suffix`` keeps the extension for writers that infer the format from it (Keras, matplotlib).
    On failure the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide run files from the user's group
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: Path, names) -> list[Path]:
    """Delete the hidden temporary files that :func:`atomic_path` leaves beside ``names`` when the
    process is killed mid-write (``.<name>.<random><suffix>``); returns what it removed."""
    import shutil

    removed = []
    for name in names:
        for path in Path(folder).glob(f".{name}.*"):
            if path.is_symlink() or path.is_file():
                path.unlink(missing_ok=True)
            elif path.is_dir():  # the staging folder of an export
                shutil.rmtree(path, ignore_errors=True)
            else:
                continue
            removed.append(path)
    return removed
