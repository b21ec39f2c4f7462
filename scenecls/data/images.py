"""Read any image a user may have as 8-bit RGB, and find the files that cannot be read.

Photos arrive as grayscale, palette, RGBA, CMYK and 16-bit files, rotated by an EXIF tag, truncated by an
interrupted copy or not images at all. Every path through the tool reads images here, so training,
evaluation and prediction all see the same pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from scenecls.cores import decode_threads
from scenecls.errors import first_line
from scenecls.files import atomic_path
from scenecls.progress import NullReporter, Reporter

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif"})
SCAN_CACHE_VERSION = 1
# The most pixels decoded for one image. A 13000x13000 PNG of 30 KB would otherwise take gigabytes; a
# 40-megapixel photo still fits (about 120 MB as RGB). JPEGs are decoded at a reduced scale first (up to
# 1/8 of each side), so a JPEG counts by the size it is decoded at, not its nominal size.
MAX_PIXELS = 40_000_000
CHECK_SIDE = 1024  # checking a file decodes all of its data, but a JPEG at no more than this size

# A truncated file must fail, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's own bomb check warns at open, before the reduced JPEG decoding that makes most large images
# harmless; MAX_PIXELS below replaces the warning with a verdict. (Its error for absurd sizes stays.)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageReadError(Exception):
    """The file is not a readable image; the message says why in a few words."""


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def load_rgb(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """The image as a ``(height, width, 3)`` uint8 array, upright, optionally resized to ``size``.

    ``size`` is ``(height, width)``. Raises :class:`ImageReadError` for anything unreadable, and for
    images over :data:`MAX_PIXELS` as decoded.
    """
    return np.asarray(_decode(path, size, resize=size is not None), dtype=np.uint8)


def decode_rgb(
    data: bytes, size: tuple[int, int] | None = None, *, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """:func:`load_rgb` for an image's bytes (an upload, a download), with its own pixel limit."""
    if not data:
        raise ImageReadError("empty file")
    image = _decode_source(io.BytesIO(data), size, resize=size is not None, max_pixels=max_pixels)
    return np.asarray(image, dtype=np.uint8)


def _decode(path: str | os.PathLike, size: tuple[int, int] | None, *, resize: bool) -> Image.Image:
    """Open, decode (a JPEG at the smallest scale still at least ``size``), check, turn upright, RGB."""
    try:
        if os.path.getsize(path) == 0:
            raise ImageReadError("empty file")
    except FileNotFoundError as exc:
        raise ImageReadError("file not found") from exc
    except OSError as exc:
        raise ImageReadError(first_line(exc)) from exc
    return _decode_source(path, size, resize=resize)


def _decode_source(
    source, size: tuple[int, int] | None, *, resize: bool, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    megapixels = f"{max_pixels / 1_000_000:g}-megapixel limit"
    try:
        with Image.open(source) as image:
            if size is not None and image.format == "JPEG":
                # Let libjpeg decode at a reduced scale when the target is much smaller.
                image.draft("RGB", (size[1], size[0]))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageReadError(f"too large: {width}x{height} pixels, over the {megapixels}")
            image.load()
            image = ImageOps.exif_transpose(image)
            image = to_rgb(image)
            if resize and size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return image
    except ImageReadError:
        raise
    except FileNotFoundError as exc:
        raise ImageReadError("file not found") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageReadError("not an image") from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"too large: over the {megapixels}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        reason = first_line(exc)
        if "truncated" in reason.lower():
            reason = "truncated image"
        raise ImageReadError(reason) from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    16-bit and float images are scaled to their full range instead of clipped; transparent pixels
    become white, as a viewer would show them on a page.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        data = np.asarray(image, dtype=np.float32)
        peak = float(data.max()) if data.size else 0.0
        if mode.startswith("I;16") or peak > 255:
            top = 65535.0
        elif mode == "F" and peak <= 1.0:
            top = 1.0
        else:
            top = 255.0
        scaled = np.clip(data / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def check_image(path: str | os.PathLike) -> str | None:
    """None if the file decodes completely, otherwise the reason it does not."""
    try:
        _decode(path, (CHECK_SIDE, CHECK_SIDE), resize=False)
    except ImageReadError as exc:
        return str(exc)
    return None


@dataclass
class ScanResult:
    good: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    cached: int = 0  # how many verdicts came from the cache


def scan_images(
    paths: Sequence[str],
    cache_file: Path | None = None,
    *,
    workers: int | None = None,
    reporter: Reporter | None = None,
) -> ScanResult:
    """Decode every image once and remember the verdict, keyed by path, size and mtime.

    A re-scan reads only the files that changed, so checking 20k images costs a ``stat`` each.
    """
    result = ScanResult()
    verdicts, result.cached = remembered_map(
        paths, check_image, cache_file, SCAN_CACHE_VERSION, missing="file not found", what="Checking images",
        workers=workers, reporter=reporter,
    )  # fmt: skip
    for path, reason in zip(paths, verdicts, strict=True):
        if reason is None:
            result.good.append(path)
        else:
            result.bad.append((path, reason))
    return result


def remembered_map(
    paths: Sequence[str],
    compute: Callable[[str], Any],
    cache_file: Path | None,
    version: int,
    *,
    missing: Any,
    what: str,
    workers: int | None = None,
    reporter: Reporter | None = None,
) -> tuple[list[Any], int]:
    """``compute(path)`` for every path, in order, in threads (Pillow decodes without the GIL), each
    result remembered in ``cache_file`` under the path, size and modification time, so that only new or
    changed files are computed again; ``missing`` for a file that is gone. Results must be JSON. Also
    returns how many came from the cache."""
    reporter = reporter or NullReporter()
    cache = load_remembered(cache_file, version)
    results: list[Any] = [missing] * len(paths)
    todo: list[tuple[int, str, str]] = []
    cached = 0
    for i, path in enumerate(paths):
        key = stat_key(path)
        entry = cache.get(path) if key is not None else None
        if entry is not None and entry[0] == key:
            results[i], cached = entry[1], cached + 1
        elif key is not None:
            todo.append((i, path, key))
    if todo:
        task = reporter.task(what, total=len(todo), unit="images")
        with ThreadPoolExecutor(max_workers=workers or decode_threads(extra=2)) as pool:
            for (i, path, key), value in zip(todo, pool.map(lambda t: compute(t[1]), todo), strict=True):
                results[i] = value
                cache[path] = [key, value]
                task.advance()
        task.close()
        save_remembered(cache_file, cache, version)
    return results, cached


def stat_key(path: str) -> str | None:
    """What a remembered fact about a file is keyed by besides its path: its size and modification time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def scan_cache_path(root: Path, cache_root: Path, kind: str = "scans") -> Path:
    """The file that remembers what was learnt of the images below ``root`` (``kind``: the scan's
    verdicts, or the survey of ``scenecls inspect``)."""
    digest = hashlib.sha1(os.fsencode(root.absolute())).hexdigest()[:16]
    return cache_root / kind / f"{digest}.json"


def load_remembered(cache_file: Path | None, version: int) -> dict[str, list]:
    """``{path: [stat key, fact]}`` as ``cache_file`` remembers it; empty when missing, damaged or of
    another version."""
    if cache_file is None:
        return {}
    try:
        data = json.loads(cache_file.read_text())
        if data.get("version") == version and isinstance(data.get("files"), dict):
            return data["files"]
    except (OSError, ValueError, AttributeError):
        pass  # missing or corrupt: rebuild
    return {}


def save_remembered(cache_file: Path | None, files: dict[str, list], version: int) -> None:
    if cache_file is None:
        return
    try:
        with atomic_path(cache_file) as tmp:
            tmp.write_text(json.dumps({"version": version, "files": files}))
    except OSError:
        pass  # a cache we cannot write only costs time
