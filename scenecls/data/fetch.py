"""Download and unpack data sets so that an interrupted run never leaves anything that looks complete.

A download streams into ``<name>.part`` and resumes with an HTTP ``Range`` request, both across retries
within one run and across runs. An archive is checked as a whole before one byte is written (no absolute
paths, no ``..``, no links or devices, a cap on the unpacked size), unpacked into a hidden temporary folder
beside the destination, and renamed into place only when complete.

What it will touch: a destination is replaced only when it is empty or holds the marker file this
module writes into every data set it places (``.scenecls.json``); any other folder is refused untouched.
Folders given with ``--from`` obey the archive rules: no links that lead out, no loops, no devices.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import lzma
import os
import shutil
import socket
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from scenecls import __version__
from scenecls.data.images import IMAGE_SUFFIXES
from scenecls.errors import DataError, DownloadError, UsageError, first_line
from scenecls.files import (
    check_free_space,
    file_sha256,
    is_staging,
    locked,
    make_staging,
    remove_abandoned,
)
from scenecls.reporting import NullReporter, Reporter
from scenecls.units import byte_size

INTEL_URL = "https://www.kaggle.com/api/v1/datasets/download/puneet6060/intel-image-classification"
# The Kaggle archive nests every split twice (seg_train/seg_train/<class>); we flatten and rename.
INTEL_SPLITS = {"seg_train": "train", "seg_test": "test", "seg_pred": "pred"}
SPLIT_DIRS = ("train", "val", "test", "pred")
MARKER = ".scenecls.json"
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
SHA256_HEX = frozenset("0123456789abcdef")
CHUNK = 1 << 20
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
IGNORED_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db"}


@dataclass
class FetchResult:
    dest: Path
    already_present: bool
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------- credentials


def kaggle_credentials() -> tuple[str, str] | None:
    """Kaggle's own lookup order: environment variables, then ``kaggle.json``."""
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if user and key:
        return user, key
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    path = config_dir / "kaggle.json"
    try:
        data = json.loads(path.read_text())
        return str(data["username"]), str(data["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_kaggle_url(url: str) -> bool:
    """True only for https URLs on kaggle.com or one of its subdomains: where credentials may go."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    return parts.scheme.lower() == "https" and (host == "kaggle.com" or host.endswith(".kaggle.com"))


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; a one-line error otherwise."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url takes an http:// or https:// address, got {url!r}")
    if any(char in parts.netloc for char in "\\ \t\r\n"):  # hosts differ between parsers: refuse
        raise UsageError(f"--url {url!r}: a backslash or space in the host part is not a valid address")
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise UsageError(f"--url {url!r} has a port that is not a number from 0 to 65535") from None
    return url.strip()


def check_sha256(value: str | None) -> str | None:
    """The checksum in lower case, or a one-line error before anything is downloaded."""
    if value is None:
        return None
    clean = value.strip().lower()
    if len(clean) != 64 or not set(clean) <= SHA256_HEX:
        raise UsageError(f"--sha256 takes 64 hexadecimal digits, got {value!r}")
    return clean


# ------------------------------------------------------------------------------------------ download


def download(
    url: str,
    target: Path,
    *,
    auth: tuple[str, str] | None = None,
    sha256: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    reporter: Reporter | None = None,
) -> Path:
    """Download ``url`` to ``target``, resuming ``target.part`` if an earlier attempt left one.

    Transient failures (connection cuts, time-outs, 5xx, 429) are retried ``retries`` times with
    exponential back-off, each retry asking only for the bytes still missing. A finished ``target`` is
    reused only when the record written beside it when it was downloaded (URL, length, checksum) still
    matches it; a file that merely has its name is downloaded afresh.
    """
    reporter = reporter or NullReporter()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if _finished_download_matches(target, url):
            _verify_checksum(target, sha256)
            return target
        reporter.warn(f"{target} is not a download this tool finished from {url}; downloading afresh")
        target.unlink(missing_ok=True)
        _record_path(target).unlink(missing_ok=True)
    part = target.with_name(target.name + ".part")
    task = reporter.task("Downloading", unit="B")
    try:
        attempt = 0
        while True:
            try:
                _download_once(url, part, auth, timeout, task)
                break
            except DownloadError:
                raise
            except (OSError, http.client.HTTPException, _Retryable) as exc:
                if attempt >= retries:
                    raise DownloadError(
                        f"download failed after {attempt + 1} attempts: {first_line(exc)}; "
                        f"run the command again to resume, or use --from with a local copy"
                    ) from exc
                delay = min(backoff * 2**attempt, 30.0)
                reporter.warn(f"{first_line(exc)}; retrying in {delay:.0f}s")
                time.sleep(delay)
                attempt += 1
    finally:
        task.close()
    part.replace(target)
    _record_path(part).unlink(missing_ok=True)
    actual = file_sha256(target)
    _record_path(target).write_text(
        json.dumps({"url": url, "bytes": target.stat().st_size, "sha256": actual, "scenecls": __version__})
    )
    _verify_checksum(target, sha256, actual)
    return target


class _Retryable(Exception):
    """A failure worth another attempt (server error, short body)."""


# Bytes received between two updates of a partial download's record: after a kill, at most this much is
# downloaded again (the file is cut back to what the record vouches for).
RECORD_EVERY = 32 * CHUNK


def _record_path(path: Path) -> Path:
    """``<file>.json`` beside a download or its ``.part``: what this tool knows of the file."""
    return path.with_name(path.name + ".json")


def _read_record(path: Path, url: str) -> dict | None:
    """The record beside ``path``, if it is one this tool wrote for ``url``."""
    try:
        data = json.loads(_record_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("url") == url else None


def _finished_download_matches(target: Path, url: str) -> bool:
    record = _read_record(target, url)
    if record is None or record.get("bytes") != target.stat().st_size:
        return False
    return record.get("sha256") == file_sha256(target)


def _write_part_record(part: Path, url: str, validator: str | None, size: int) -> None:
    _record_path(part).write_text(json.dumps({"url": url, "validator": validator, "bytes": size}))


def _resumable_offset(part: Path, url: str) -> tuple[int, str | None]:
    """Where to resume ``part`` and the validator it was downloaded under; ``(0, None)`` to start again.

    Only bytes the record vouches for are kept: a ``.part`` with no record, another URL's, or one without
    a validator (resuming could splice two different files together) is deleted; bytes past the
    recorded length (written after the last update of the record, before a kill) are cut off.
    """
    if not part.exists():
        return 0, None
    record = _read_record(part, url)
    size = part.stat().st_size
    recorded = record.get("bytes") if record else None
    if not record or not record.get("validator") or not isinstance(recorded, int) or not 0 < recorded <= size:
        part.unlink()
        _record_path(part).unlink(missing_ok=True)
        return 0, None
    if recorded < size:
        os.truncate(part, recorded)
    return recorded, record["validator"]


def _validator(headers) -> str | None:
    etag = headers.get("ETag")
    # A weak ETag may not be used with If-Range (RFC 9110 13.1.5); Last-Modified then serves.
    return etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")


def discard_partial(target: Path) -> None:
    """Forget a download in progress or finished: its ``.part`` file, records and result."""
    part = target.with_name(target.name + ".part")
    for path in (target, _record_path(target), part, _record_path(part)):
        path.unlink(missing_ok=True)


def _download_once(url: str, part: Path, auth: tuple[str, str] | None, timeout: float, task) -> None:
    offset, validator = _resumable_offset(part, url)
    request = urllib.request.Request(url, headers={"User-Agent": f"scenecls/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        # The server sends the rest only if the file is still the one we started; else all of it.
        request.add_header("If-Range", validator)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        # Unredirected: the credentials go to the host we asked, never to the storage host that
        # the download redirects to.
        request.add_unredirected_header("Authorization", f"Basic {token}")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            total = _content_range_total(exc.headers.get("Content-Range"))
            if total == offset:
                return  # the part file already holds everything
            part.unlink()
            raise _Retryable("the server refused to resume; starting again") from exc
        if exc.code in RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(_http_advice(exc.code, str(exc.reason), url)) from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (socket.timeout, ConnectionError, TimeoutError)):
            raise _Retryable(str(exc.reason)) from exc
        raise DownloadError(
            f"cannot reach {_host(url)}: {exc.reason}; check the network or use --from with a "
            f"local copy of the archive"
        ) from exc

    with response:
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        if status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retryable("the server resumed at the wrong offset; starting again")
            mode = "ab"
        else:
            # The server ignored Range, or the file changed since (If-Range): take the whole body.
            offset, mode = 0, "wb"
            validator = _validator(response.headers)
            _write_part_record(part, url, validator, 0)
        total = offset + int(length) if length and length.isdigit() else None
        task.update(completed=offset, total=total)
        received = recorded = offset
        try:
            with open(part, mode) as out:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    task.update(completed=received)
                    if received - recorded >= RECORD_EVERY:
                        out.flush()
                        _write_part_record(part, url, validator, received)
                        recorded = received
        finally:
            if received != recorded:
                _write_part_record(part, url, validator, received)
        if total is not None and received < total:
            raise _Retryable(f"connection closed after {received} of {total} bytes")


def _http_advice(code: int, reason: str, url: str) -> str:
    head = f"HTTP {code} {reason} from {_host(url)}"
    if code in (401, 403):
        return (
            f"{head}: the server refused the download; for Kaggle set KAGGLE_USERNAME and "
            f"KAGGLE_KEY (or put kaggle.json in ~/.kaggle/), or download the archive yourself and "
            f"use --from PATH"
        )
    if code == 404:
        return f"{head}: nothing at {url}; check --url, or use --from PATH with a local copy"
    return f"{head}; check --url, or use --from PATH with a local copy"


def _host(url: str) -> str:
    return urllib.request.urlparse(url).netloc or url


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-999/1000"
    try:
        return int(value.split()[1].split("-")[0]) if value else None
    except (IndexError, ValueError):
        return None


def _content_range_total(value: str | None) -> int | None:
    try:
        return int(value.rsplit("/", 1)[1]) if value else None
    except (IndexError, ValueError):
        return None


def _check_looks_like_archive(path: Path, url: str) -> None:
    """Refuse (and delete) a download that is no archive at all, such as a login or error page."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if _archive_kind(head) is None and not _is_tar(path):
        discard_partial(path)
        what = "a web page" if head.lstrip()[:1] == b"<" else "not a zip or tar archive"
        raise DownloadError(
            f"{_host(url)} sent {what} instead of the data set; it was deleted. Check --url (for Kaggle, "
            f"the credentials), or download the archive yourself and use --from PATH"
        )


def _archive_kind(head: bytes) -> str | None:
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


def _verify_checksum(path: Path, expected: str | None, actual: str | None = None) -> None:
    if not expected:
        return
    actual = actual or file_sha256(path)
    if actual.lower() != expected.strip().lower():
        path.unlink(missing_ok=True)
        _record_path(path).unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {path.name}: expected {expected.strip().lower()}, got "
            f"{actual}; the file was removed, run again to download it afresh"
        )


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
        elif _is_tar(archive):
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
    kind = _archive_kind(head)
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


def _is_tar(path: Path) -> bool:
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


# ---------------------------------------------------------------------------------------- layout


def normalise_layout(root: Path) -> Path:
    """Strip wrapper folders and turn Kaggle's ``seg_train/seg_train`` into ``train``.

    Returns the folder that holds the data set (``root`` or a folder inside it).
    """
    while True:
        entries = [e for e in root.iterdir() if e.name not in IGNORED_NAMES]
        if (
            len(entries) == 1
            and entries[0].is_dir()
            and entries[0].name not in SPLIT_DIRS
            and entries[0].name not in INTEL_SPLITS
            and not any(_is_image(p) for p in entries[0].iterdir())
        ):
            root = entries[0]
            continue
        break
    for name, split in INTEL_SPLITS.items():
        outer = root / name
        if not outer.is_dir() or (root / split).exists():
            continue
        inner = outer / name
        if inner.is_dir():
            inner.rename(root / split)
            shutil.rmtree(outer)  # only the empty shell (or stray junk) is left
        else:
            outer.rename(root / split)
    return root


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def count_images(root: Path) -> dict[str, dict[str, int]]:
    """Image counts by split and class; a plain class-folder set is reported as split ``all``."""
    splits = [d for d in SPLIT_DIRS if (root / d).is_dir()]
    counts: dict[str, dict[str, int]] = {}
    for split in splits or [""]:
        base = root / split if split else root
        per_class: dict[str, int] = {}
        for child in sorted(base.iterdir()):
            if child.is_dir() and child.name not in IGNORED_NAMES:
                per_class[child.name] = sum(1 for p in child.rglob("*") if _is_image(p))
        loose = sum(1 for p in base.iterdir() if _is_image(p))
        if loose:
            per_class["(unlabelled)"] = loose
        counts[split or "all"] = per_class
    return counts


# ------------------------------------------------------------------------------------------- fetch


def fetch_dataset(
    dest: Path,
    *,
    url: str | None = None,
    source: Path | None = None,
    sha256: str | None = None,
    force: bool = False,
    keep_archive: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retries: int = 5,
    backoff: float = 1.0,
    reporter: Reporter | None = None,
) -> FetchResult:
    """Put a data set at ``dest`` from ``source`` (archive or folder) or by downloading ``url``.

    Nothing at ``dest`` changes until the new data set is complete. ``dest`` must be new, empty, or a
    data set this function placed (it holds :data:`MARKER`); anything else is refused untouched. An
    existing data set is left alone and reported, or with ``force`` replaced in one rename (or, for a
    mount point, which cannot be renamed, by moving its entries). A symbolic link as ``dest`` stays a
    link: the folder it points to is filled or replaced. Two runs into one ``dest`` take turns: the
    second waits for the first's lock (:data:`LOCK_SUFFIX`), then finds its data set.
    """
    reporter = reporter or NullReporter()
    shown = dest.expanduser().absolute()
    dest = Path(os.path.realpath(shown))  # a link to a folder: work on the folder, keep the link
    sha256 = check_sha256(sha256)
    if url is not None:
        url = check_url(url)
    if source is not None:
        source = Path(os.path.realpath(source.expanduser()))
        if not source.exists():
            raise DataError(f"{source} does not exist")
        if source.is_dir() and sha256:
            raise UsageError("--sha256 checks an archive, but --from names a folder")
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{shown} exists and is not a folder")
    if source is not None and source.is_dir() and _is_within(dest, source):
        raise DataError(f"--dest {shown} lies inside --from {source}; choose a folder outside it")
    in_place = os.path.ismount(dest)  # cannot be renamed: stage inside it, then move entries
    staging_parent = dest if in_place else dest.parent
    _make_folder(staging_parent)

    def waiting() -> None:
        reporter.log(f"Waiting for another fetch-data into {shown} to finish")

    with locked(_lock_path(dest, in_place), on_wait=waiting):
        if dest.is_dir():
            state = _dest_state(dest, in_place)
            if state == "foreign":
                raise DataError(
                    f"{shown} holds files that fetch-data did not put there; it only fills a new or empty "
                    f"folder or replaces a data set it placed itself (nothing was changed)"
                )
            if state == "ours" and not force:
                return FetchResult(shown, already_present=True, counts=count_images(dest))
            if source is not None and state == "ours" and _is_within(source, dest):
                raise DataError(
                    f"--from {source} lies inside {shown}, which --force would replace; move it out"
                )
        stem = _staging_stem(dest, in_place)
        for kind in (STAGING_KIND, OLD_KIND):  # left by a run that was killed (we hold the lock)
            remove_abandoned(staging_parent, kind, stem)
        archive, downloaded = _obtain_archive(
            dest, url, source, sha256, force=force, retries=retries, backoff=backoff, reporter=reporter
        )
        counts = _place(
            dest, in_place, archive, source, downloaded, url=url, sha256=sha256, max_bytes=max_bytes,
            reporter=reporter,
        )  # fmt: skip
    if downloaded and archive is not None and not keep_archive:
        discard_partial(archive)
    return FetchResult(shown, already_present=False, counts=counts)


STAGING_KIND = "fetching"  # a data set being unpacked or copied: .<dest>.<host>-<pid>.fetching
OLD_KIND = "replaced"  # a replaced data set on its way out
LOCK_SUFFIX = ".scenecls-lock"


def _lock_path(dest: Path, in_place: bool) -> Path:
    """``.<dest>.scenecls-lock`` beside ``dest``; inside it for a mount point."""
    return dest / LOCK_SUFFIX if in_place else dest.with_name(f".{dest.name}{LOCK_SUFFIX}")


def _staging_stem(dest: Path, in_place: bool) -> str:
    return "scenecls" if in_place else dest.name


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataError(f"cannot make the folder {folder}: a file of that name is in the way") from None


def _obtain_archive(
    dest: Path, url: str | None, source: Path | None, sha256: str | None, *, force: bool, retries: int,
    backoff: float, reporter: Reporter,
) -> tuple[Path | None, bool]:  # fmt: skip
    """The archive to unpack (None for a folder to copy) and whether it was downloaded."""
    if source is not None:
        if source.is_file() and sha256:
            _verify_source_checksum(source, sha256)
        return (source if source.is_file() else None), False
    url = url or INTEL_URL
    name = "download-" + hashlib.sha1(url.encode()).hexdigest()[:12]
    archive = dest.parent / ".downloads" / name
    archive.parent.mkdir(parents=True, exist_ok=True)
    # Two destinations may share one download folder: the download itself takes turns too.
    with locked(archive.with_name(name + LOCK_SUFFIX)):
        if force:
            archive.unlink(missing_ok=True)  # fetch again; a partial download still resumes
            _record_path(archive).unlink(missing_ok=True)
        auth = kaggle_credentials() if is_kaggle_url(url) else None
        download(url, archive, auth=auth, sha256=sha256, retries=retries, backoff=backoff, reporter=reporter)
        _check_looks_like_archive(archive, url)
    return archive, True


def _place(
    dest: Path, in_place: bool, archive: Path | None, source: Path | None, downloaded: bool, *,
    url: str | None, sha256: str | None, max_bytes: int, reporter: Reporter,
) -> dict[str, dict[str, int]]:  # fmt: skip
    """Unpack ``archive`` (or copy ``source``) into staging, mark it, and swap it into place."""
    staging_parent = dest if in_place else dest.parent
    staging = make_staging(staging_parent, _staging_stem(dest, in_place), STAGING_KIND)
    try:
        unpacked = staging / "data"
        if archive is not None:
            unpacked.mkdir()
            try:
                extract_archive(archive, unpacked, max_bytes=max_bytes, reporter=reporter)
            except DataError:
                if downloaded:  # a damaged download must not be reused by the next run
                    discard_partial(archive)
                raise
        else:
            assert source is not None
            reporter.log(f"Copying {source}")
            copy_folder(source, unpacked, max_bytes=max_bytes)
        root = normalise_layout(unpacked)
        counts = count_images(root)
        if not any(n for per_class in counts.values() for n in per_class.values()):
            raise DataError(f"no images found in {source or url}")
        (root / MARKER).write_text(
            json.dumps(
                {
                    "source": str(source) if source else url,
                    "sha256": sha256,
                    "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "scenecls": __version__,
                },
                indent=2,
            )
        )
        if in_place:
            _replace_contents(root, dest, staging)
        else:
            _swap_into_place(root, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def _dest_state(dest: Path, in_place: bool = False) -> str:
    """``empty``, ``ours`` (holds the marker this module writes) or ``foreign``; the lock and staging
    this module keeps inside a mount point do not count."""
    try:
        entries = list(dest.iterdir())
    except OSError as exc:
        raise DataError(f"cannot read {dest}: {exc.strerror or first_line(exc)}") from exc
    if in_place:
        entries = [e for e in entries if e.name != LOCK_SUFFIX and not _is_our_staging(e)]
    if not entries:
        return "empty"
    marker = dest / MARKER
    return "ours" if marker.is_file() and not marker.is_symlink() else "foreign"


def _is_our_staging(path: Path) -> bool:
    return any(is_staging(path, kind, "scenecls") for kind in (STAGING_KIND, OLD_KIND))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _verify_source_checksum(path: Path, expected: str) -> None:
    actual = file_sha256(path)
    if actual.lower() != expected.strip().lower():
        raise DataError(f"checksum mismatch for {path}: expected {expected.strip().lower()}, got {actual}")


def _swap_into_place(new: Path, dest: Path) -> None:
    """Rename ``new`` to ``dest``; an old ``dest`` is moved aside first (into marked staging, so that a
    kill here leaves something the next run knows to remove) and deleted after."""
    old = None
    if dest.is_dir():
        if any(dest.iterdir()):
            old = make_staging(dest.parent, dest.name, OLD_KIND)
            try:
                dest.rename(old / "data")
            except OSError:
                shutil.rmtree(old, ignore_errors=True)
                raise
        else:
            dest.rmdir()
    new.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _replace_contents(new: Path, dest: Path, staging: Path) -> None:
    """For a ``dest`` that cannot be renamed (a mount point): move its old entries aside, the new
    ones in, then delete the old. ``new`` lies inside ``dest`` (in ``staging``), so every move is a rename."""
    old = make_staging(dest, "scenecls", OLD_KIND)
    lock = dest / LOCK_SUFFIX
    for entry in list(dest.iterdir()):
        if entry not in (old, staging, lock):
            entry.rename(old / entry.name)
    for entry in list(new.iterdir()):
        entry.rename(dest / entry.name)
    shutil.rmtree(old, ignore_errors=True)


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
                if not _is_within(real, source):
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
