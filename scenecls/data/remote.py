"""One image from an ``http(s)://`` URL, fetched with the limits a command line needs: a size cap (a
declared length over it is refused before any byte is read; a body that runs past it is cut off), a time
limit for the whole fetch, and a check of what came back (a web page is not an image)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from scenecls import __version__
from scenecls.data.images import ImageReadError
from scenecls.errors import first_line

MAX_BYTES = 20_000_000  # a photo is a few MB; a larger URL is almost surely not one image
TIMEOUT = 15.0  # seconds for the whole fetch
ACCEPTED = ("image/", "application/octet-stream", "binary/octet-stream")


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def fetch_image_bytes(url: str, *, max_bytes: int = MAX_BYTES, timeout: float = TIMEOUT) -> bytes:
    """The body at ``url``; :class:`~scenecls.data.images.ImageReadError` (one line) when it is too
    large, too slow, not an image's content type, or the request fails."""
    request = urllib.request.Request(
        url, headers={"User-Agent": f"scenecls/{__version__}", "Accept": "image/*"}
    )
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if kind and not kind.startswith(ACCEPTED):
                raise ImageReadError(f"not an image: the server sent {kind}")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ImageReadError(f"too large: {int(declared):,} bytes, over the {max_bytes:,}-byte limit")
            chunks, size = [], 0
            while chunk := response.read(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise ImageReadError(f"too large: over the {max_bytes:,}-byte limit")
                if time.monotonic() > deadline:
                    raise ImageReadError(f"too slow: not fetched within {timeout:g} s")
                chunks.append(chunk)
            return b"".join(chunks)
    except ImageReadError:
        raise
    except urllib.error.HTTPError as exc:
        raise ImageReadError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise ImageReadError(f"cannot fetch: {first_line(exc.reason)}") from None
    except (TimeoutError, OSError, ValueError) as exc:
        raise ImageReadError(f"cannot fetch: {first_line(exc) or type(exc).__name__}") from None
