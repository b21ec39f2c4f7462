"""Archives and folders as data sets arrive in them: every entry checked before one byte is written (no
absolute paths, no ``..``, no links or devices, encrypted entries or methods Python cannot unpack, a cap
on the unpacked size and ratio, room left on the disk), then unpacked or copied.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from scenecls.errors import DataError, first_line
from scenecls.files import (
    CHUNK,
    check_free_space,
)
from scenecls.progress import NullReporter, Reporter
from scenecls.units import byte_size

GIB = 1024**3
DEFAULT_MAX_BYTES = 20 * GIB  # the real Intel archive unpacks to well under 1 GiB
# Images barely compress (the Intel zip is 0.96x its content); text and padding do. A ratio past this
# on an archive that unpacks to more than RATIO_FLOOR is a bomb, not a data set.
MAX_RATIO = 100
RATIO_FLOOR = 256 * 1024**2
ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
ZIP_METHOD_NAMES = {9: "Deflate64", 93: "Zstandard", 95: "xz", 98: "PPMd", 99: "AES"}
IGNORED_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db"}

# ------------------------------------------------------------------------------------------- extract


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    reporter: Reporter | None = None,
) -> None:
    """Unpack a zip or tar archive into ``dest`` after checking every entry.

    Refuses the whole archive if any entry would land outside ``dest`` (absolute path, ``..``), is a
    link or a device, is encrypted or packed in a way Python cannot unpack, or if the unpacked size
    would pass ``max_bytes``, :data:`MAX_RATIO` times the archive's size, or the free disk space.
    """
    reporter = reporter or NullReporter()
    with contextlib.ExitStack() as stack:
        if zipfile.is_zipfile(archive):
            members = list(_zip_members(stack.enter_context(_open_zip(archive)), archive))
        elif is_tar(archive):
            members = list(_tar_members(stack.enter_context(_open_tar(archive)), archive))
        else:
            raise DataError(_not_an_archive(archive))
        _check_unpacked_size(archive, sum(size for _, _, size, _ in members), dest, max_bytes)
        _extract_members(archive, members, dest, max_bytes, reporter)


def _not_an_archive(archive: Path) -> str:
    """Why ``archive`` opens as neither zip nor tar, in words that say what to do."""
    try:
        with open(archive, "rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        return f"cannot read {archive}: {exc.strerror or first_line(exc)}"
    kind = archive_kind(head)
    if kind == "zip":
        return f"{archive.name} is a truncated zip (its end is missing); download or copy it again"
    if kind is not None:
        return f"{archive.name} is a damaged or truncated {kind} file; download or copy it again"
    if not head:
        return f"{archive.name} is empty; download or copy it again"
    return f"{archive.name} is not a zip or tar archive"


def _check_unpacked_size(archive: Path, declared: int, dest: Path, max_bytes: int) -> None:
    """Refuse an archive bomb before one byte is written."""
    if declared > max_bytes:
        raise DataError(
            f"refusing {archive.name}: it would unpack to {byte_size(declared)}, more than the "
            f"{byte_size(max_bytes)} limit"
        )
    packed = archive.stat().st_size
    if declared > RATIO_FLOOR and declared > MAX_RATIO * packed:
        raise DataError(
            f"refusing {archive.name}: {byte_size(packed)} would unpack to {byte_size(declared)}, "
            f"a compression ratio over {MAX_RATIO}:1 (an archive bomb, not images)"
        )
    check_free_space(archive.name, declared, dest)


def _extract_members(archive: Path, members: list[tuple], dest: Path, max_bytes: int, reporter) -> None:
    task = reporter.task("Extracting", total=len(members), unit="files")
    written = 0
    try:
        for rel, is_dir, _, opener in members:
            out = dest.joinpath(*rel.parts)
            if is_dir:
                out.mkdir(parents=True, exist_ok=True)
                task.advance()
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with opener() as src, open(out, "wb") as dst:
                while chunk := src.read(CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise DataError(
                            f"refusing {archive.name}: it unpacks to more than the "
                            f"{byte_size(max_bytes)} limit"
                        )
                    dst.write(chunk)
            task.advance()
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"{archive.name} is damaged or truncated: {first_line(exc)}") from exc
    except OSError as exc:
        if exc.errno is not None:  # the disk, not the archive: full, read-only, no permission
            raise
        raise DataError(f"{archive.name} is damaged or truncated: {first_line(exc)}") from exc
    finally:
        task.close()


def is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError, tarfile.TarError, zlib.error, lzma.LZMAError):
        return False  # damaged or cut short: _not_an_archive says which


def _safe_relpath(name: str, archive: Path) -> PurePosixPath | None:
    """The entry's path inside the destination; None for entries we skip; refuse escapes."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise DataError(f"refusing {archive.name}: entry {name!r} has an absolute path")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"refusing {archive.name}: entry {name!r} points outside the archive")
    if not parts or any(p in IGNORED_NAMES or p.startswith("._") for p in parts):
        return None
    return PurePosixPath(*parts)


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive.name} is damaged or truncated: {first_line(exc)}") from exc


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive.name} is damaged or truncated: {first_line(exc)}") from exc


def _zip_members(handle: zipfile.ZipFile, archive: Path) -> Iterator[tuple]:
    for info in handle.infolist():
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            what = "a symbolic link" if kind == stat.S_IFLNK else "a special file"
            raise DataError(f"refusing {archive.name}: entry {info.filename!r} is {what}")
        rel = _safe_relpath(info.filename, archive)
        if rel is None:
            continue
        if info.flag_bits & 0x1:
            raise DataError(
                f"refusing {archive.name}: entry {info.filename!r} is encrypted; unpack it yourself "
                f"and use --from FOLDER"
            )
        if info.compress_type not in ZIP_METHODS:
            method = ZIP_METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise DataError(
                f"{archive.name} is compressed with {method}, which Python cannot unpack; unpack it "
                f"with another tool and use --from FOLDER, or repack it as a plain zip or .tar.gz"
            )
        yield rel, info.is_dir(), info.file_size, (lambda i=info: handle.open(i))


def _tar_members(handle: tarfile.TarFile, archive: Path) -> Iterator[tuple]:
    try:
        members = handle.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive.name} is damaged or truncated: {first_line(exc)}") from exc
    for member in members:
        if member.issym() or member.islnk():
            raise DataError(f"refusing {archive.name}: entry {member.name!r} is a link")
        if not (member.isfile() or member.isdir()):
            raise DataError(f"refusing {archive.name}: entry {member.name!r} is a special file")
        rel = _safe_relpath(member.name, archive)
        if rel is None:
            continue
        yield rel, member.isdir(), member.size, (lambda m=member: handle.extractfile(m))


def archive_kind(head: bytes) -> str | None:
    """What the first bytes of a file say it is: ``zip``, a compressed stream, or None."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    return None


def is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def copy_folder(source: Path, target: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Copy an extracted data set with the archive rules: links are followed only to files inside
    ``source`` (copied as files), never out of it or into a folder (no loops); devices and pipes are
    refused; the total size is capped."""
    source = source.resolve()
    entries: list[tuple[PurePosixPath, Path | None]] = []  # (relative path, file to copy or None: a folder)
    total = 0
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        here = Path(dirpath)
        for name in list(dirnames):
            if name in IGNORED_NAMES:
                dirnames.remove(name)
            elif (here / name).is_symlink():
                raise DataError(f"refusing {source}: {here / name} is a link to a folder")
        for name in [*dirnames, *filenames]:
            path = here / name
            if name in IGNORED_NAMES or name.startswith("._"):
                continue
            rel = PurePosixPath(*path.relative_to(source).parts)
            if name in dirnames:
                entries.append((rel, None))
                continue
            real = path
            if path.is_symlink():
                real = Path(os.path.realpath(path))
                if not is_within(real, source):
                    raise DataError(f"refusing {source}: {path} is a link to {real}, outside the folder")
            try:
                info = real.stat()
            except OSError as exc:
                raise DataError(f"refusing {source}: {path} is a broken link") from exc
            if not stat.S_ISREG(info.st_mode):
                raise DataError(f"refusing {source}: {path} is not a regular file")
            total += info.st_size
            entries.append((rel, real))
    if total > max_bytes:
        raise DataError(
            f"refusing {source}: it holds {byte_size(total)}, more than the {byte_size(max_bytes)} limit"
        )
    check_free_space(source.name, total, target)
    target.mkdir(parents=True, exist_ok=True)
    for rel, real in entries:
        out = target.joinpath(*rel.parts)
        if real is None:
            out.mkdir(parents=True, exist_ok=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(real, out)
