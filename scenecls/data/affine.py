"""The seed's random geometric augmentation as one affine resampling per image.

``ImageDataGenerator`` composed rotation, shift, shear and zoom into one matrix and resampled each image
once. Keras 3's separate ``RandomRotation``/``RandomTranslation``/``RandomShear``/``RandomZoom`` layers
resample four times: four times the work, and four rounds of bilinear blur. :class:`RandomAffine`
draws the same ranges, composes them (and the horizontal flip) into one transform per image and calls
``keras.ops.image.affine_transform`` once.

This module imports Keras; :mod:`scenecls.data.augment` imports it only when augmentation is built.
"""

from __future__ import annotations

import math

import keras
from keras import ops


def affine_rows(angle, shift_x, shift_y, shear, zoom_x, zoom_y, flip, height: int, width: int) -> list:
    """The 8 ``affine_transform`` parameters (each a batch vector) for the given draws.

    ``angle`` and ``shear`` are in radians, shifts in pixels, zooms factors (> 1 shows more of the
    image), ``flip`` 0 or 1. The matrix maps an *output* pixel to where it is read from the input:
    flip, zoom, shear and rotation about the image centre, then the shift. Works on numpy arrays and
    on tensors alike.
    """
    cos, sin, tan = ops.cos(angle), ops.sin(angle), ops.tan(shear)
    mirror = 1.0 - 2.0 * flip  # -1 flips x about the centre
    # linear part L = R(angle) @ Shear @ Zoom @ Flip
    l00 = cos * zoom_x * mirror
    l01 = (cos * tan - sin) * zoom_y
    l10 = sin * zoom_x * mirror
    l11 = (sin * tan + cos) * zoom_y
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a2 = cx - l00 * cx - l01 * cy + shift_x
    b2 = cy - l10 * cx - l11 * cy + shift_y
    zero = ops.zeros_like(l00)
    return [l00, l01, a2, l10, l11, b2, zero, zero]


class RandomAffine(keras.layers.Layer):
    """Random rotation, shift, shear, zoom and horizontal flip in one resampling.

    ``rotation`` and ``shear`` in degrees either way, ``shift`` a fraction of width and height either
    way, ``zoom`` a fraction in or out (drawn for x and y independently, as ``ImageDataGenerator``
    did), ``flip`` a coin per image. Points read from outside the image take the nearest edge pixel.
    """

    def __init__(
        self,
        rotation: float = 0.0,
        shift: float = 0.0,
        shear: float = 0.0,
        zoom: float = 0.0,
        flip: bool = False,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.rotation, self.shift, self.shear, self.zoom, self.flip = rotation, shift, shear, zoom, flip
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def next_seed(self):
        """A seed for the next batch, from the layer's seed state (a ``(2,)`` int32 tensor).

        The pipeline draws it in a sequential step, in batch order, and the parallel step that augments
        passes it to :meth:`call`: the draws are then the same whichever thread runs first. (Drawing from
        the seed state inside the parallel step hands the draws to batches in the order threads reach
        it, which differs from run to run.)
        """
        return ops.cast(self.seed_generator.next(), "int32")

    def call(self, images, training: bool = True, seed=None):
        if not training:
            return images
        n = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        u = self._draws(n, seed)  # (7, n), uniform in [0, 1)

        def either_way(row, extent: float):
            return (2.0 * u[row] - 1.0) * extent

        angle = either_way(0, math.radians(self.rotation))
        shift_x = either_way(1, self.shift * width)
        shift_y = either_way(2, self.shift * height)
        shear = either_way(3, math.radians(self.shear))
        zoom_x = 1.0 + either_way(4, self.zoom)
        zoom_y = 1.0 + either_way(5, self.zoom)
        flip = ops.cast(u[6] < 0.5, "float32") if self.flip else ops.zeros_like(u[6])
        rows = affine_rows(angle, shift_x, shift_y, shear, zoom_x, zoom_y, flip, height, width)
        transform = ops.stack(rows, axis=1)
        return ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="nearest")

    def _draws(self, n, seed):
        if seed is None:
            return keras.random.uniform((7, n), seed=self.seed_generator)
        import tensorflow as tf

        return tf.random.stateless_uniform((7, n), seed=seed)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "rotation": self.rotation,
            "shift": self.shift,
            "shear": self.shear,
            "zoom": self.zoom,
            "flip": self.flip,
            "seed": self.seed,
        }
