"""The rules for files this tool writes, in one place: free space, atomic replacement, locks,
and staging folders that name the process that made them.

A file is replaced in one step, so that a crash or Ctrl-C leaves either the old file or the new one.

A staging folder (``.<name>.<host>-<pid>.<kind>`` beside what it will become) holds a build, a download's
unpacking or an export until it is complete and renamed into place. Its name says whose it is, so that a
later run removes only staging that *this tool* left behind when it was killed (its process is gone), and
never a user's folder that happens to look alike: a folder is taken for staging only when its name has
that exact form and it holds the staging marker (or nothing at all).
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from scenecls.errors import DataError
from scenecls.units import byte_size

CHUNK = 1 << 20
DISK_HEADROOM = 512 * 1024**2  # left free after a large write, so that training can still write its runs
STAGING_MARKER = ".scenecls-staging"
# Another host's unfinished staging (a shared filesystem) counts as abandoned after this many seconds,
# since that host's processes cannot be asked.
ABANDONED_AFTER = 24 * 3600


def check_free_space(what: str, size: int, dest: Path) -> None:
    """Refuse to start writing ``size`` bytes that would (nearly) fill the disk under ``dest``."""
    probe = Path(dest)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if size + DISK_HEADROOM > free:
        raise DataError(
            f"not enough disk space for {what}: it needs {byte_size(size)} and {probe} has {byte_size(free)} "
            f"free ({byte_size(DISK_HEADROOM)} must stay free)"
        )


# What a write that cannot go on fails with: the disk or quota is full, a file would pass the size limit,
# or the folder cannot be written. A cache meets these by going without (every entry can be rebuilt).
UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def cannot_write(what: str, folder: Path, needs: int, exc: OSError) -> str:
    """Why ``what`` could not be written into ``folder``, and what to do, in one sentence."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "set SCENECLS_HOME to a writable folder, or pass --no-cache"
    else:
        advice = "free some space (or set SCENECLS_HOME to a larger disk)"
    return f"{what} could not be written to {folder} ({reason}; it needs {byte_size(needs)}): {advice}"


# ------------------------------------------------------------------------------------- atomic writes


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


# ------------------------------------------------------------------------------------------ processes


def host_name() -> str:
    """This machine's name as it may stand in a file name."""
    return re.sub(r"[^A-Za-z0-9_]", "_", platform.node()) or "host"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------- staging


def staging_path(parent: Path, name: str, kind: str) -> Path:
    """``parent/.<name>.<host>-<pid>.<kind>``: where this process stages ``name`` (not created)."""
    return Path(parent) / f".{name}.{host_name()}-{os.getpid()}.{kind}"


def make_staging(parent: Path, name: str, kind: str) -> Path:
    """Create (afresh) and mark this process's staging folder for ``name``."""
    staging = staging_path(parent, name, kind)
    if staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging)  # this very process's own, from an attempt that failed
    staging.mkdir(parents=False)
    (staging / STAGING_MARKER).write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    return staging


def _staging_pattern(name: str | None, kind: str) -> re.Pattern:
    stem = re.escape(name) if name is not None else r"[^/]+?"
    return re.compile(rf"^\.{stem}\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.{re.escape(kind)}$")


def is_staging(path: Path, kind: str, name: str | None = None, *, marked: bool = True) -> bool:
    """Whether ``path`` is a staging folder this tool made: the name's form, a real folder (never a
    link), and (``marked``) the marker inside or nothing at all (killed between making and marking it).
    Inside the tool's own folders (the caches) the name's form is enough: staging made before the
    marker existed has none."""
    if path.is_symlink() or not path.is_dir() or not _staging_pattern(name, kind).match(path.name):
        return False
    if not marked:
        return True
    try:
        entries = [entry.name for entry in path.iterdir()]
    except OSError:
        return False
    return not entries or STAGING_MARKER in entries


def is_abandoned(staging: Path, kind: str | None = None) -> bool:
    """Whether a staging folder's process is gone: on this host, asked; on another, a day's silence."""
    kind = kind or staging.name.rsplit(".", 1)[-1]
    match = _staging_pattern(None, kind).match(staging.name)
    if match is None:
        return False
    if match["host"] == host_name():
        return not process_alive(int(match["pid"]))
    try:
        return time.time() - staging.stat().st_mtime > ABANDONED_AFTER
    except OSError:
        return False


def remove_abandoned(parent: Path, kind: str, name: str | None = None, *, marked: bool = True) -> list[Path]:
    """Remove the abandoned staging folders of ``kind`` (for ``name``, or any) in ``parent``; only
    folders :func:`is_staging` recognises are touched. Returns what was removed."""
    removed: list[Path] = []
    if not Path(parent).is_dir() or Path(parent).is_symlink():
        return removed
    for path in Path(parent).glob(f".*.{kind}"):
        if is_staging(path, kind, name, marked=marked) and is_abandoned(path, kind):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# ------------------------------------------------------------------------------- paths a command takes


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _under_a_file(path: Path) -> Path | None:
    """The first of ``path``'s parents that exists and is not a folder (so nothing can be made under it)."""
    for parent in reversed(Path(path).absolute().parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _refuse_link_or_under_a_file(path: Path, option: str, refuse: type, instead: str) -> None:
    """What every output path is refused for, file or folder: lying under a file (nothing can be made
    there) or being a link (never written through); ``instead`` says what to give."""
    blocker = _under_a_file(path)
    if blocker is not None:
        raise refuse(f"{option} {path}: {blocker} is a file, not a folder")
    if path.is_symlink():
        raise refuse(f"{option} {path} is a link; {instead}")


def check_output_file(path: Path, option: str, error: type | None = None) -> None:
    """Refuse, in one line and before any work, a file a command would write or replace that is not a
    plain file of its own: a link (never written through), a folder, a device, a FIFO or a socket (a
    write would block for ever or fill the disk), or a path under a file. ``error``: the exception class
    (a usage error unless told)."""
    from scenecls.errors import UsageError

    refuse = error or UsageError
    path = Path(path)
    _refuse_link_or_under_a_file(path, option, refuse, "give a file name (a new file or a regular one)")
    if path.exists():
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise refuse(f"{option} {path} is {_kind(mode)}; give a file name (a new file or a regular one)")


def check_input_file(path: Path, option: str) -> None:
    """Refuse, in one line, a file a command reads that is missing or is not a regular file (a device
    or FIFO would be read for ever); a link to a regular file is read as that file. A data error (exit
    1), as a missing input has always been."""
    from scenecls.errors import DataError

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{option} {path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{option} {path}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{option} {path} is {_kind(mode)}, not a file")


def check_output_folder(path: Path, option: str) -> None:
    """Refuse a folder a command writes into that is a link, a file of another kind or lies under a file."""
    from scenecls.errors import UsageError

    path = Path(path)
    _refuse_link_or_under_a_file(path, option, UsageError, "give a real folder")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is {_kind(path.stat().st_mode)}, not a folder")


def read_head(path: Path, limit: int = 4096) -> bytes:
    """At most ``limit`` bytes from the start of a regular file (a header, a marker's first line):
    never a whole file of unknown size, never a device or FIFO."""
    with open(path, "rb", opener=_nonblocking) as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return b""
        return handle.read(limit)


def _nonblocking(path, flags):
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


# --------------------------------------------------------------------------------------------- locks


@contextlib.contextmanager
def locked(path: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` for the block; when another process holds it, call
    ``on_wait`` once and wait for it. The lock file is removed when the block ends, so nothing is left
    behind (a waiter that then holds a removed file's lock notices, and locks the path afresh).

    The lock is the operating system's (``flock``), so a process that dies releases it. Where locks
    are not supported (Windows, some network file systems), the block runs unlocked.
    """
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    waited = False
    while True:
        handle = open(path, "a+b")  # noqa: SIM115  (held for the block)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait and not waited:
                on_wait()
            waited = True
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except OSError:  # ENOLCK and kin: no locks on this file system
            handle.close()
            yield
            return
        if _same_file(handle, path):
            break
        handle.close()  # its holder removed it as we waited: lock the file now at ``path``
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        handle.close()


def _same_file(handle, path: Path) -> bool:
    try:
        here, there = os.fstat(handle.fileno()), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


OUTPUT_MARKERS = (
    ".scenecls-inspect",
    ".scenecls-explain",
    ".scenecls-suggest",
)  # folders of our outputs: never read as data


def holds_our_output(folder: Path) -> bool:
    """Whether ``folder`` (or a folder just inside it) is an output folder of ours, which a scan of images
    must pass over (contact sheets and heat maps are not photographs of a class)."""
    folder = Path(folder)
    return any((folder / m).is_file() or any(folder.glob(f"*/{m}")) for m in OUTPUT_MARKERS)


def _marker_names(folder: Path, marker: str, writer: str) -> set[str] | None:
    """The names the marker of ``writer`` in ``folder`` records as written there; None when the marker is
    not one this tool wrote for ``writer`` (a link, not a plain file, or other content)."""
    path = folder / marker
    if path.is_symlink() or not path.is_file():
        return None
    try:
        lines = read_head(path, 1024**2).decode("utf-8", "surrogateescape").split("\n")
    except OSError:
        return None
    if lines[0] != f"written by {writer}":
        return None
    return {line for line in lines[1:] if line}


def claim_folder(folder: Path, marker: str, writer: str) -> None:
    """Make ``folder`` an output folder of ``writer`` (a command), marked by the file ``marker``: a new
    or empty folder, or one it marked before and that holds nothing but what the marker records it
    wrote. A folder holding anyone else's files, a marker that is not ours, a link or a file is refused
    (a usage error) before any work, so no file of the user's is ever replaced."""
    from scenecls.errors import UsageError

    check_output_folder(folder, "--output")
    if folder.is_dir() and any(folder.iterdir()):
        names = _marker_names(folder, marker, writer)
        if names is None:
            raise UsageError(
                f"--output {folder} holds files that {writer} did not write: give a new or empty folder"
            )
        foreign = [
            entry.name
            for entry in folder.iterdir()
            if entry.name != marker and entry.name not in names and not _our_temporary(entry.name, names)
        ]
        if foreign:
            raise UsageError(
                f"--output {folder} holds files that {writer} did not write ({', '.join(sorted(foreign)[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): give a new or empty folder"
            )
    folder.mkdir(parents=True, exist_ok=True)
    if _marker_names(folder, marker, writer) is None:
        with atomic_path(folder / marker) as tmp:
            tmp.write_text(f"written by {writer}\n")


def _our_temporary(name: str, names: set[str]) -> bool:
    """An atomic write's temporary (``.<name>.<random>``) of a file the marker records, left by a kill."""
    return name.startswith(".") and any(name.startswith(f".{known}.") for known in names)


def note_written(folder: Path, marker: str, writer: str, names) -> None:
    """Record in ``folder``'s marker, before they are written, the files ``writer`` writes there, so that a
    later run knows them from a user's files."""
    known = _marker_names(folder, marker, writer) or set()
    new = [name for name in dict.fromkeys(names) if name not in known]
    if not new:
        return
    lines = [f"written by {writer}", *sorted(known), *new]
    with atomic_path(folder / marker) as tmp:
        tmp.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
