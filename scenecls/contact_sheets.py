"""Contact sheets: many images on one PNG, each with a caption, for a person to judge at a glance
(duplicate groups one per row, likely label errors in a grid with their given and suggested labels)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from scenecls.data.images import ImageReadError, load_rgb
from scenecls.files import atomic_path

TILE = 128
CAPTION_LINES = 2
LINE = 14
GAP = 6
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MISSING = (200, 200, 200)


@dataclass(frozen=True)
class Tile:
    path: str
    caption: tuple[str, ...]  # up to CAPTION_LINES short lines
    alert: bool = False  # drawn with a red frame (a member whose label differs, a doubted label)


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: one bitmap size
        return ImageFont.load_default()


def _thumbnail(path: str) -> Image.Image:
    try:
        image = Image.fromarray(load_rgb(path))
    except ImageReadError:
        return Image.new("RGB", (TILE, TILE), MISSING)
    image.thumbnail((TILE, TILE), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (TILE, TILE), BACKGROUND)
    canvas.paste(image, ((TILE - image.width) // 2, (TILE - image.height) // 2))
    return canvas


def _printable(text: str) -> str:
    """``text`` on one line: a file name may hold a newline, a tab or a byte that is not UTF-8,
    which Pillow cannot measure or draw; each is shown escaped, as ``\\n`` or ``\\xe9``."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif 0xDC80 <= ord(char) <= 0xDCFF:  # a raw byte kept by surrogateescape
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` on one line, cut (with an ellipsis) to ``width`` pixels."""
    text = _printable(text)
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def draw_sheet(
    rows: Sequence[Sequence[Tile]], title: str, target: Path, *, row_labels: Sequence[str] = ()
) -> Path:
    """``rows`` of tiles (each row one group, or one line of a grid) under ``title``, as a PNG at
    ``target`` (written whole or not at all). Only the images of ``rows`` are read, one at a time."""
    font, big = _font(11), _font(14)
    label_width = 70 if row_labels else 0
    columns = max((len(row) for row in rows), default=1)
    cell_h = TILE + CAPTION_LINES * LINE + GAP
    width = label_width + columns * (TILE + GAP) + GAP
    height = 28 + len(rows) * cell_h + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, 7), _fit(draw, title, big, width - 2 * GAP), fill=INK, font=big)
    for r, row in enumerate(rows):
        top = 28 + r * cell_h
        if r < len(row_labels):
            draw.text(
                (GAP, top + TILE // 2 - LINE),
                _fit(draw, row_labels[r], font, label_width - GAP),
                fill=INK,
                font=font,
            )
        for c, tile in enumerate(row):
            left = label_width + GAP + c * (TILE + GAP)
            sheet.paste(_thumbnail(tile.path), (left, top))
            if tile.alert:
                draw.rectangle(
                    (left - 2, top - 2, left + TILE + 1, top + TILE + 1), outline=(210, 30, 30), width=2
                )
            for k, line in enumerate(tile.caption[:CAPTION_LINES]):
                draw.text(
                    (left, top + TILE + 1 + k * LINE), _fit(draw, line, font, TILE), fill=INK, font=font
                )
    with atomic_path(target, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return target


def grid(tiles: Sequence[Tile], columns: int = 10) -> list[list[Tile]]:
    """``tiles`` as rows of ``columns``."""
    return [list(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
