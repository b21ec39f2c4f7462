"""Every image mode a user may have becomes upright 8-bit RGB; unreadable files are named, not fatal."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from scenecls.data.images import ImageReadError, check_image, load_rgb, scan_images


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    ("mode", "colour", "suffix"),
    [
        ("L", 128, ".png"),
        ("P", 3, ".png"),
        ("RGBA", (255, 0, 0, 255), ".png"),
        ("LA", (100, 255), ".png"),
        ("CMYK", (0, 255, 255, 0), ".jpg"),
        ("RGB", (0, 0, 255), ".webp"),
        ("RGB", (0, 0, 255), ".bmp"),
        ("RGB", (0, 0, 255), ".tif"),
    ],
)
def test_modes_become_rgb(tmp_path, mode, colour, suffix):
    path = save(Image.new(mode, (20, 10), colour), tmp_path / f"img{suffix}")
    pixels = load_rgb(path)
    assert pixels.shape == (10, 20, 3) and pixels.dtype == np.uint8


def test_cmyk_colours_are_converted(tmp_path):
    path = save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "red.jpg")
    r, g, b = load_rgb(path)[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    data = np.full((8, 8), 32768, dtype=np.uint16)
    path = save(Image.fromarray(data), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    value = load_rgb(path)[0, 0]
    assert 120 <= value[0] <= 135 and value[0] == value[1] == value[2]


def test_transparent_pixels_become_white(tmp_path):
    path = save(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), tmp_path / "clear.png")
    assert load_rgb(path)[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.new("RGB", (30, 10), (10, 200, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(image, tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(path).shape == (30, 10, 3)


def test_resize_gives_requested_shape(tmp_path):
    path = save(Image.new("RGB", (300, 200), (5, 5, 5)), tmp_path / "big.jpg")
    assert load_rgb(path, (32, 48)).shape == (32, 48, 3)


def test_bad_files_have_reasons(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    good = save(Image.new("RGB", (64, 64), (1, 2, 3)), tmp_path / "good.jpg")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    assert check_image(empty) == "empty file"
    assert check_image(text) == "not an image"
    assert check_image(truncated) is not None
    assert check_image(tmp_path / "missing.jpg") == "file not found"
    assert check_image(good) is None
    with pytest.raises(ImageReadError):
        load_rgb(truncated)


def test_scan_caches_verdicts_and_notices_changes(tmp_path):
    paths = []
    for i in range(5):
        paths.append(str(save(Image.new("RGB", (8, 8), (i, i, i)), tmp_path / f"{i}.png")))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    paths.append(str(broken))
    cache = tmp_path / "cache" / "scan.json"

    first = scan_images(paths, cache)
    assert len(first.good) == 5 and first.bad == [(str(broken), first.bad[0][1])]
    assert first.cached == 0 and cache.exists()

    second = scan_images(paths, cache)
    assert second.cached == 6 and second.good == first.good

    save(Image.new("RGB", (8, 8)), broken)  # repaired: size and mtime change
    os.utime(broken, ns=(1, 1))
    third = scan_images(paths, cache)
    assert third.cached == 5 and len(third.good) == 6


def test_corrupt_scan_cache_is_rebuilt(tmp_path):
    path = str(save(Image.new("RGB", (8, 8)), tmp_path / "a.png"))
    cache = tmp_path / "scan.json"
    cache.write_text("{not json")
    result = scan_images([path], cache)
    assert result.good == [path] and result.cached == 0
