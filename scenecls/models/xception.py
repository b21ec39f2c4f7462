"""Xception — Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017.

Blocks ``block1`` ... ``block14`` as Keras names them: entry flow 1-4, middle flow 5-12, exit flow 13-14.
The residual convolutions and ``Add`` layers carry generated names; the graph places them.

Paper: https://arxiv.org/abs/1610.02357
"""

from __future__ import annotations

import re

from scenecls.models.registry import SCALE_MINUS_ONE_TO_ONE, BackboneSpec, register

_BLOCK = re.compile(r"^block(\d+)_")


def block_of(name: str) -> str | None:
    if match := _BLOCK.match(name):
        return f"block{match.group(1)}"
    return None


def build(input_shape, weights):
    import keras

    return keras.applications.Xception(include_top=False, weights=weights, input_shape=input_shape)


def weights_file(size: int) -> str:
    return "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"


SPEC = register(
    BackboneSpec(
        name="xception",
        build=build,
        default_size=150,
        min_size=71,
        preprocessing=SCALE_MINUS_ONE_TO_ONE,
        block_of=block_of,
        weights_file=weights_file,
        params=20_861_480,
        layers=132,
        blocks=14,
    )
)
