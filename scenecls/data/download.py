"""Downloading an archive over HTTP(S): resumable with ``Range``, validated with ``If-Range``, retried with
back-off, Kaggle credentials sent only where they belong.

A download streams into ``<name>.part`` and resumes with an HTTP ``Range`` request, both across retries
within one run and across runs, but only from the bytes its record beside it vouches for. A finished
download is reused only while its record (URL, length, SHA-256) still matches it.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from scenecls import __version__
from scenecls.checksums import file_sha256
from scenecls.data.archives import archive_kind, is_tar
from scenecls.errors import DownloadError, UsageError, first_line
from scenecls.files import CHUNK
from scenecls.progress import NullReporter, Reporter

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
SHA256_HEX = frozenset("0123456789abcdef")


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
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.hostname  # noqa: B018  (raises on an unclosed IPv6 bracket)
    except ValueError as error:
        raise UsageError(f"--url {url!r} is not a valid address: {error}") from None
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
        digest = _finished_download_digest(target, url)
        if digest is not None:
            _verify_checksum(target, sha256, digest)  # the file is hashed once, not twice
            return target
        reporter.warn(f"{target} is not a download this tool finished from {url}; downloading afresh")
        target.unlink(missing_ok=True)
        record_path(target).unlink(missing_ok=True)
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
    record_path(part).unlink(missing_ok=True)
    actual = file_sha256(target)
    record_path(target).write_text(
        json.dumps({"url": url, "bytes": target.stat().st_size, "sha256": actual, "scenecls": __version__})
    )
    _verify_checksum(target, sha256, actual)
    return target


class _Retryable(Exception):
    """A failure worth another attempt (server error, short body)."""


# Bytes received between two updates of a partial download's record: after a kill, at most this much is
# downloaded again (the file is cut back to what the record vouches for).
RECORD_EVERY = 32 * CHUNK


def record_path(path: Path) -> Path:
    """``<file>.json`` beside a download or its ``.part``: what this tool knows of the file."""
    return path.with_name(path.name + ".json")


def _read_record(path: Path, url: str) -> dict | None:
    """The record beside ``path``, if it is one this tool wrote for ``url``."""
    try:
        data = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("url") == url else None


def _finished_download_digest(target: Path, url: str) -> str | None:
    """The SHA-256 of a download this tool finished from ``url``, if its record still matches it."""
    record = _read_record(target, url)
    if record is None or record.get("bytes") != target.stat().st_size:
        return None
    digest = file_sha256(target)
    return digest if record.get("sha256") == digest else None


def _write_part_record(part: Path, url: str, validator: str | None, size: int) -> None:
    record_path(part).write_text(json.dumps({"url": url, "validator": validator, "bytes": size}))


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
        record_path(part).unlink(missing_ok=True)
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
    for path in (target, record_path(target), part, record_path(part)):
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


def _verify_checksum(path: Path, expected: str | None, actual: str | None = None) -> None:
    if not expected:
        return
    actual = actual or file_sha256(path)
    if actual.lower() != expected.strip().lower():
        path.unlink(missing_ok=True)
        record_path(path).unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {path.name}: expected {expected.strip().lower()}, got "
            f"{actual}; the file was removed, run again to download it afresh"
        )


def check_looks_like_archive(path: Path, url: str) -> None:
    """Refuse (and delete) a download that is no archive at all, such as a login or error page."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if archive_kind(head) is None and not is_tar(path):
        discard_partial(path)
        what = "a web page" if head.lstrip()[:1] == b"<" else "not a zip or tar archive"
        raise DownloadError(
            f"{_host(url)} sent {what} instead of the data set; it was deleted. Check --url (for Kaggle, "
            f"the credentials), or download the archive yourself and use --from PATH"
        )
