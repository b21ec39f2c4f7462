"""Lists of images to leave out of a run (``--exclude FILE``), as ``scenecls inspect --write-exclude``
writes them: one path per line, relative to the data set's folder (or absolute), ``#`` for comments.

The images themselves are never touched: a run simply does not see them, and records which list it
left out (``config.json``) and what it left out (the data fingerprint changes with it).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

from scenecls.errors import DataError
from scenecls.files import atomic_path, check_input_file, check_output_file, read_head

HEADER = "# scenecls exclude list"  # the first line of a list this tool wrote: it may replace it
MAX_LIST_BYTES = 256 * 1024**2  # a list of every image of a data set of millions is a fraction of this


def data_folder(root: Path) -> Path:
    """The folder the list's relative paths start from: the data set's folder (a CSV's own folder)."""
    root = Path(root)
    return root.parent if root.is_file() else root


def read_exclude(path: Path, root: Path) -> set[str]:
    """The absolute, normalised paths ``path`` lists; a clear error when it cannot be read."""
    path = Path(path).expanduser()
    check_input_file(path, "--exclude")
    if path.stat().st_size > MAX_LIST_BYTES:
        raise DataError(
            f"--exclude {path} is larger than an exclude list can be ({MAX_LIST_BYTES // 1024**2} MiB)"
        )
    try:
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as exc:
        raise DataError(f"--exclude {path}: cannot read it ({exc})") from None
    base = data_folder(root)
    listed = set()
    for line in text.split("\n"):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            listed.add(normal(base / unescape(entry)))  # an absolute entry stays itself
    return listed


# One escaping, written and read alike: a name's bytes as they are on disk (a name that is not UTF-8 keeps
# its raw bytes), with a backslash, a newline or a carriage return inside it written as \\, \n, \r.
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


def escape(name: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in name)


def unescape(entry: str) -> str:
    out, chars = [], iter(entry)
    for ch in chars:
        if ch == "\\":
            following = next(chars, "")
            out.append(_UNESCAPES.get(following, ch + following))
        else:
            out.append(ch)
    return "".join(out)


def normal(path: str | os.PathLike) -> str:
    return os.path.normpath(os.path.abspath(path))


def exclude_digest(paths: Iterable[str]) -> str:
    """A short hash of the paths left out, for the data fingerprint."""
    return hashlib.sha256("\n".join(sorted(paths)).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def check_replaceable(path: Path) -> None:
    """Refuse ``path`` unless it is new or a list this tool wrote (its first line), never a link."""
    path = Path(path).expanduser()
    check_output_file(path, "--write-exclude", DataError)
    if path.exists():
        try:
            first = read_head(path).decode("utf-8", errors="replace").splitlines()[:1]
        except OSError:
            first = []
        if not first or not first[0].startswith(HEADER):
            raise DataError(f"{path} exists and is not an exclude list scenecls wrote; it is left as it is")


def write_exclude(path: Path, paths: Iterable[str], root: Path, *, why: str) -> int:
    """Write ``paths`` (relative to the data set's folder where they lie inside it) as a list ``--exclude``
    reads; refuses to replace a file that is not such a list. Returns how many were written."""
    path = Path(path).expanduser()
    check_replaceable(path)
    base = Path(normal(data_folder(root)))
    lines = []
    for entry in sorted(set(paths)):
        absolute = Path(normal(entry))
        lines.append(escape(str(absolute.relative_to(base)) if base in absolute.parents else str(absolute)))
    body = [f"{HEADER} ({time.strftime('%Y-%m-%d %H:%M')})", f"# {why}", *lines]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(("\n".join(body) + "\n").encode("utf-8", "surrogateescape"))
    return len(lines)
