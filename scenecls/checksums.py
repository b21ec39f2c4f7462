"""Checksums of the files this tool writes: a model file's SHA-256 is recorded beside it when it is
written (``NAME.sha256``, in the format ``sha256sum -c`` reads), so that a file changed or damaged since
is refused instead of loaded (a model file is code until checked)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from scenecls.files import CHUNK, atomic_path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


CHECKSUM_SUFFIX = ".sha256"


def checksum_path(path: Path) -> Path:
    """Where the SHA-256 of a model file this tool wrote is kept: ``NAME.sha256`` beside it, in the
    format ``sha256sum -c`` reads."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def record_checksum(path: Path) -> str:
    """Write the SHA-256 of ``path`` beside it (after the file itself is in place); returns it."""
    digest = file_sha256(path)
    with atomic_path(checksum_path(path)) as tmp:
        tmp.write_text(f"{digest}  {Path(path).name}\n", encoding="utf-8")
    return digest


def recorded_checksum(path: Path) -> str | None:
    """The SHA-256 recorded for ``path`` when it was written; None when none was (a file from elsewhere,
    or from before checksums were kept) or the record is unreadable."""
    record = checksum_path(path)
    try:
        if record.is_symlink() or not record.is_file() or record.stat().st_size > 4096:
            return None
        digest = record.read_text(encoding="utf-8").split(maxsplit=1)[0].lower()
    except (OSError, UnicodeDecodeError, IndexError):
        return None
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None


def checksum_matches(path: Path) -> bool:
    """False only when a checksum was recorded for ``path`` and the file no longer has it (changed or
    damaged since it was written)."""
    recorded = recorded_checksum(path)
    return recorded is None or file_sha256(path) == recorded


def changed_since_written(path: Path) -> str:
    """Why a model file whose checksum no longer matches is refused, in one sentence."""
    return (
        f"{path} is not the file scenecls wrote: its SHA-256 differs from the one recorded in "
        f"{checksum_path(path).name} (changed or damaged since); refused"
    )
