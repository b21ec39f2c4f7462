"""MobileNetV2 — Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.

Blocks: the stem (``Conv1`` and the first, unnumbered bottleneck ``expanded_conv``), the inverted-residual
blocks ``block_1`` ... ``block_16``, and the final 1x1 convolution ``Conv_1``.

Paper: https://arxiv.org/abs/1801.04381
"""

from __future__ import annotations

import re

from scenecls.models.registry import SCALE_MINUS_ONE_TO_ONE, BackboneSpec, register

_BLOCK = re.compile(r"^block_(\d+)_")
_WEIGHT_SIZES = (96, 128, 160, 192, 224)


def block_of(name: str) -> str | None:
    if match := _BLOCK.match(name):
        return f"block_{match.group(1)}"
    if name.startswith(("Conv1", "bn_Conv1", "expanded_conv")):
        return "stem"
    if name in ("Conv_1", "Conv_1_bn", "out_relu"):
        return "Conv_1"
    return None


def build(input_shape, weights):
    import keras

    return keras.applications.MobileNetV2(include_top=False, weights=weights, input_shape=input_shape)


def weights_file(size: int) -> str:
    # Keras ships weights for five sizes and falls back to 224 for any other.
    rows = size if size in _WEIGHT_SIZES else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


SPEC = register(
    BackboneSpec(
        name="mobilenet_v2",
        build=build,
        default_size=150,
        min_size=32,
        preprocessing=SCALE_MINUS_ONE_TO_ONE,
        block_of=block_of,
        weights_file=weights_file,
        params=2_257_984,
        layers=154,
        blocks=18,
    )
)
