"""The one-resampling augmentation: its transform means what it says, and the layer draws per image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from keras import ops

from scenecls.data.affine import RandomAffine, affine_rows
from scenecls.data.augment import AugmentConfig, build_augmentation

SIZE = 9


@pytest.fixture
def image() -> np.ndarray:
    """One 9x9 image whose every pixel is distinct: value = 10 * row + column, in all 3 channels."""
    grid = (10 * np.arange(SIZE)[:, None] + np.arange(SIZE)[None, :]).astype("float32")
    return np.repeat(grid[None, :, :, None], 3, axis=3)


def transformed(image, angle=0.0, shift_x=0.0, shift_y=0.0, shear=0.0, zoom_x=1.0, zoom_y=1.0, flip=0.0):
    draws = [np.array([v], dtype="float32") for v in (angle, shift_x, shift_y, shear, zoom_x, zoom_y, flip)]
    rows = affine_rows(*draws, SIZE, SIZE)
    transform = ops.stack([ops.convert_to_tensor(r, "float32") for r in rows], axis=1)
    out = ops.image.affine_transform(image, transform, interpolation="bilinear", fill_mode="nearest")
    return ops.convert_to_numpy(out)


def test_no_draws_leave_the_image_as_it_is(image):
    np.testing.assert_array_equal(transformed(image), image)


def test_flip_mirrors_left_and_right(image):
    np.testing.assert_array_equal(transformed(image, flip=1.0), image[:, :, ::-1])


def test_a_quarter_turn_is_a_quarter_turn(image):
    out = transformed(image, angle=math.pi / 2)
    np.testing.assert_allclose(out[0, :, :, 0], np.rot90(image[0, :, :, 0]), atol=1e-3)


def test_shift_moves_content_by_whole_pixels(image):
    out = transformed(image, shift_x=3.0)
    np.testing.assert_array_equal(out[0, :, : SIZE - 3], image[0, :, 3:])
    np.testing.assert_array_equal(out[0, :, SIZE - 3 :], np.repeat(image[0, :, -1:], 3, axis=1))  # edge


def test_zoom_reads_further_from_the_centre(image):
    out = transformed(image, zoom_x=2.0)
    centre = SIZE // 2
    for x in range(2, 7):  # x maps to centre + 2 * (x - centre), inside the image
        np.testing.assert_array_equal(out[0, :, x], image[0, :, centre + 2 * (x - centre)])


def test_shear_slides_rows_in_proportion_to_their_distance_from_the_centre(image):
    out = transformed(image, shear=math.atan(1.0))  # tan = 1: one pixel per row
    centre = SIZE // 2
    row = centre + 2
    np.testing.assert_array_equal(out[0, row, : SIZE - 2], image[0, row, 2:])
    np.testing.assert_array_equal(out[0, centre], image[0, centre])


def test_the_layer_draws_per_image_is_seeded_and_idles_outside_training(image):
    batch = np.repeat(image, 16, axis=0)
    config = dict(rotation=40.0, shift=0.2, shear=0.2, zoom=0.2, flip=True)
    out = ops.convert_to_numpy(RandomAffine(**config, seed=3)(batch))
    again = ops.convert_to_numpy(RandomAffine(**config, seed=3)(batch))
    other = ops.convert_to_numpy(RandomAffine(**config, seed=4)(batch))
    np.testing.assert_array_equal(out, again)
    assert not np.allclose(out, other)
    assert len({o.tobytes() for o in out}) == 16  # each image got its own transform
    assert out.min() >= batch.min() and out.max() <= batch.max()  # bilinear + nearest fill: no overshoot
    np.testing.assert_array_equal(ops.convert_to_numpy(RandomAffine(**config)(batch, training=False)), batch)


def test_only_flip_flips_about_half_the_images(image):
    batch = np.repeat(image, 64, axis=0)
    layer = build_augmentation(AugmentConfig(rotation=0.0, shift=0.0, shear=0.0, zoom=0.0, flip=True), seed=0)
    out = ops.convert_to_numpy(layer(batch, training=True))
    flipped = [np.array_equal(o, image[0, :, ::-1]) for o in out]
    kept = [np.array_equal(o, image[0]) for o in out]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each image is one or the other
    assert 16 < sum(flipped) < 48
