"""Images that are broken, huge or hostile: reported and skipped (or decoded small), never a traceback."""

from __future__ import annotations

import io
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import write_class_folders

# --------------------------------------------------------------------------------------- images


def png_bytes(width: int, height: int) -> bytes:
    """A valid grayscale PNG of zeros, compressed row by row (a 13000x13000 one is about 170 KB)."""
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_hand_written_png_decodes():
    image = Image.open(io.BytesIO(png_bytes(3, 2)))
    assert image.size == (3, 2) and image.getpixel((2, 1)) == 0


def test_oversize_png_is_reported_unreadable_without_decoding(tmp_path):
    from scenecls.data.images import MAX_PIXELS, ImageReadError, check_image, load_rgb

    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(13000, 13000))
    reason = check_image(path)
    assert reason is not None and "too large" in reason and f"{MAX_PIXELS // 1_000_000}" in reason
    with pytest.raises(ImageReadError, match="too large"):
        load_rgb(path, (64, 64))


def test_pillow_bomb_warnings_do_not_reach_the_user(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(13000, 13000))  # over Pillow's own 89-megapixel warning
    code = f"from scenecls.data.images import check_image; print(check_image({str(path)!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "too large" in done.stdout
    assert done.stderr == ""


def test_large_jpeg_is_decoded_downscaled(tmp_path):
    from scenecls.data.images import MAX_PIXELS, check_image, load_rgb

    side = 9000  # 81 megapixels: over the cap at full size, 1/8 of each side in JPEG draft mode
    assert side * side > MAX_PIXELS
    path = tmp_path / "big.jpg"
    Image.new("L", (side, side), 128).save(path, quality=50)
    assert check_image(path) is None
    image = load_rgb(path, (32, 32))
    assert image.shape == (32, 32, 3) and int(image.mean()) in range(120, 137)


def test_folder_with_oversize_images_skips_them(tmp_path):
    from scenecls.data.pipeline import prepare_data

    root = write_class_folders(tmp_path / "set", 4, size=16)
    (root / "alpha" / "bomb.png").write_bytes(png_bytes(13000, 13000))
    data = prepare_data(root, cache_root=tmp_path / "cache")
    assert [(Path(p).name, "too large" in r) for p, r in data.skipped] == [("bomb.png", True)]
