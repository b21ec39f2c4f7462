"""What can be known about a data set's images without a model: each file's content hash, a perceptual
hash, its size and whether it is grayscale, and the counts made from them.

Every image is read once and what was learnt is remembered under its path, size and modification time
(as the scan of unreadable files is), so a second look at 20,000 images costs a ``stat`` each. The facts
of 100,000 images take a few megabytes: nothing of the pixels is kept.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from scenecls.data.images import MAX_PIXELS, ImageReadError, remembered_map, to_rgb
from scenecls.progress import Reporter

SURVEY_VERSION = 1
THUMB_SIDE = 64  # the size an image is looked at for its hash and its colour
# A pixel whose channels differ by more than this is coloured; an image with fewer than 1 % of such
# pixels is grayscale (JPEG's chroma noise gives a "gray" photo a few units of spread).
GRAY_SPREAD = 12
GRAY_SHARE = 0.01
SQUARE_RANGE = (0.75, 4 / 3)  # width / height outside this is called elongated


@dataclass(frozen=True)
class ImageFacts:
    """One image as a survey sees it. ``dhash`` is the 64-bit difference hash of its upright grayscale
    version (9 x 8 pixels, each bit: is a pixel brighter than its right neighbour), which a re-encoding
    or resizing hardly changes: two images within a few bits of each other look alike."""

    sha256: str
    dhash: int
    width: int
    height: int
    gray: bool

    def to_row(self) -> list:
        return [self.sha256, f"{self.dhash:016x}", self.width, self.height, self.gray]

    @classmethod
    def from_row(cls, row: list) -> ImageFacts:
        return cls(str(row[0]), int(row[1], 16), int(row[2]), int(row[3]), bool(row[4]))


def image_facts(path: str | os.PathLike) -> ImageFacts:
    """The facts of one image file; :class:`ImageReadError` when it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(exc.strerror or "cannot read") from exc
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = _upright_size(image)  # before a reduced decoding changes image.size
            if image.format == "JPEG":
                image.draft("RGB", (THUMB_SIDE, THUMB_SIDE))
            if image.size[0] * image.size[1] > MAX_PIXELS:
                raise ImageReadError(f"too large: {size[0]}x{size[1]} pixels")
            image.load()
            image = to_rgb(ImageOps.exif_transpose(image))
            thumb = np.asarray(image.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), dtype=np.int16)
            small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(str(exc).splitlines()[0] if str(exc) else "not an image") from exc
    spread = thumb.max(axis=2) - thumb.min(axis=2)
    gray = float((spread > GRAY_SPREAD).mean()) < GRAY_SHARE
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    dhash = int("".join("1" if b else "0" for b in bits), 2)
    return ImageFacts(hashlib.sha256(data).hexdigest(), dhash, size[0], size[1], gray)


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the stored image as a viewer shows it (EXIF orientations 5-8 turn it)."""
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: the stored orientation
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def survey_images(
    paths: Sequence[str],
    cache_file: Path | None = None,
    *,
    workers: int | None = None,
    reporter: Reporter | None = None,
) -> list[ImageFacts | str]:
    """The facts of every path, in order, or the reason it could not be read (a string).

    Reuses what ``cache_file`` remembers for files whose size and modification time are unchanged.
    """
    rows, _ = remembered_map(
        paths, _facts_or_reason, cache_file, SURVEY_VERSION, missing="file not found", what="Hashing images",
        workers=workers, reporter=reporter,
    )  # fmt: skip
    return [ImageFacts.from_row(row) if isinstance(row, list) else str(row) for row in rows]


def _facts_or_reason(path: str) -> list | str:
    """The facts of ``path`` as a row (JSON, for the cache), or why it cannot be read."""
    try:
        return image_facts(path).to_row()
    except ImageReadError as exc:
        return str(exc)


def image_statistics(facts: Sequence[ImageFacts]) -> dict:
    """Sizes, aspect ratios and grayscale share of ``facts``: what a reader checks before training."""
    if not facts:
        return {"images": 0}
    sizes = Counter((f.width, f.height) for f in facts)
    ratios = np.array([f.width / max(f.height, 1) for f in facts])
    sides = np.array([min(f.width, f.height) for f in facts])
    low, high = SQUARE_RANGE
    common = sizes.most_common(5)
    return {
        "images": len(facts),
        "common_sizes": [{"width": w, "height": h, "images": n} for (w, h), n in common],
        "other_sizes": len(facts) - common[0][1],
        "smallest_side": {
            "min": int(sides.min()),
            "median": float(np.median(sides)),
            "max": int(sides.max()),
        },
        "aspect_ratio": {
            "min": float(ratios.min()),
            "median": float(np.median(ratios)),
            "max": float(ratios.max()),
        },
        "elongated": int(((ratios < low) | (ratios > high)).sum()),
        "grayscale": sum(f.gray for f in facts),
    }
