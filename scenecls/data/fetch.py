"""Download and unpack data sets so that an interrupted run never leaves anything that looks complete.

A download streams into ``<name>.part`` and resumes with an HTTP ``Range`` request, both across retries
within one run and across runs. An archive is checked as a whole before one byte is written (no absolute
paths, no ``..``, no links or devices, a cap on the unpacked size), unpacked into a hidden temporary folder
beside the destination, and renamed into place only when complete.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from scenecls import __version__
from scenecls.data.images import IMAGE_SUFFIXES
from scenecls.errors import DataError, DownloadError, first_line
from scenecls.reporting import NullReporter, Reporter

INTEL_URL = "https://www.kaggle.com/api/v1/datasets/download/puneet6060/intel-image-classification"
# The Kaggle archive nests every split twice (seg_train/seg_train/<class>); we flatten and rename.
INTEL_SPLITS = {"seg_train": "train", "seg_test": "test", "seg_pred": "pred"}
SPLIT_DIRS = ("train", "val", "test", "pred")
MARKER = ".scenecls.json"
DEFAULT_MAX_BYTES = 20 * 1024**3  # the real Intel archive unpacks to well under 1 GiB
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
    exponential back-off, each retry asking only for the bytes still missing.
    """
    reporter = reporter or NullReporter()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        _verify_checksum(target, sha256)
        return target
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
    _verify_checksum(target, sha256)
    return target


class _Retryable(Exception):
    """A failure worth another attempt (server error, short body)."""


def _download_once(url: str, part: Path, auth: tuple[str, str] | None, timeout: float, task) -> None:
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": f"scenecls/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
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
            offset, mode = 0, "wb"  # the server ignored Range: take the whole body
        total = offset + int(length) if length and length.isdigit() else None
        task.update(completed=offset, total=total)
        received = offset
        with open(part, mode) as out:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                task.update(completed=received)
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_checksum(path: Path, expected: str | None) -> None:
    if not expected:
        return
    actual = file_sha256(path)
    if actual.lower() != expected.strip().lower():
        path.unlink(missing_ok=True)
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
    link or a device, or if the unpacked size would pass ``max_bytes``.
    """
    reporter = reporter or NullReporter()
    with contextlib.ExitStack() as stack:
        if zipfile.is_zipfile(archive):
            members = list(_zip_members(stack.enter_context(_open_zip(archive)), archive))
        elif _is_tar(archive):
            members = list(_tar_members(stack.enter_context(_open_tar(archive)), archive))
        else:
            raise DataError(f"{archive} is not a zip or tar archive")
        _extract_members(archive, members, dest, max_bytes, reporter)


def _extract_members(archive: Path, members: list[tuple], dest: Path, max_bytes: int, reporter) -> None:
    declared = sum(size for _, _, size, _ in members)
    if declared > max_bytes:
        raise DataError(
            f"refusing {archive.name}: it would unpack to {declared / 1e9:.1f} GB, more than the "
            f"{max_bytes / 1e9:.1f} GB limit"
        )
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
                            f"{max_bytes / 1e9:.1f} GB limit"
                        )
                    dst.write(chunk)
            task.advance()
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive.name} is damaged or truncated: {first_line(exc)}") from exc
    finally:
        task.close()


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


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

    Nothing at ``dest`` changes until the new data set is complete; with ``force`` the old one is
    replaced in one rename, otherwise an existing one is left alone and reported.
    """
    reporter = reporter or NullReporter()
    dest = dest.expanduser().absolute()
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest} exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        return FetchResult(dest, already_present=True, counts=count_images(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(dest)

    archive: Path | None = None
    downloaded = False
    if source is not None:
        source = source.expanduser()
        if not source.exists():
            raise DataError(f"{source} does not exist")
        if source.is_file():
            archive = source
            if sha256:
                _verify_source_checksum(source, sha256)
    else:
        url = url or INTEL_URL
        name = "download-" + hashlib.sha1(url.encode()).hexdigest()[:12]
        archive = dest.parent / ".downloads" / name
        auth = kaggle_credentials() if _host(url).endswith("kaggle.com") else None
        download(
            url,
            archive,
            auth=auth,
            sha256=sha256,
            retries=retries,
            backoff=backoff,
            reporter=reporter,
        )
        downloaded = True

    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        unpacked = staging / "data"
        if archive is not None:
            unpacked.mkdir()
            extract_archive(archive, unpacked, max_bytes=max_bytes, reporter=reporter)
        else:
            assert source is not None
            reporter.log(f"Copying {source}")
            shutil.copytree(source, unpacked, ignore=shutil.ignore_patterns(*IGNORED_NAMES))
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
        _swap_into_place(root, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if downloaded and archive is not None and not keep_archive:
        archive.unlink(missing_ok=True)
    return FetchResult(dest, already_present=False, counts=counts)


def _verify_source_checksum(path: Path, expected: str) -> None:
    actual = file_sha256(path)
    if actual.lower() != expected.strip().lower():
        raise DataError(f"checksum mismatch for {path}: expected {expected.strip().lower()}, got {actual}")


def _swap_into_place(new: Path, dest: Path) -> None:
    """Rename ``new`` to ``dest``; an old ``dest`` is moved aside first and deleted after."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        dest.rename(old / "data")
    new.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_partials(dest: Path) -> None:
    """Left-overs of a run that was killed before it could clean up."""
    for pattern in (f".{dest.name}.*.partial", f".{dest.name}.*.old"):
        for stale in dest.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
