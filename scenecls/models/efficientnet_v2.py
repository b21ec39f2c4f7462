"""EfficientNetV2-B0 — Tan & Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021.

Blocks: the stem, the MBConv / Fused-MBConv blocks ``block1a`` ... ``block6h`` and the ``top`` 1x1
convolution. The model normalises its own 0-255 input (``include_preprocessing``).

Paper: https://arxiv.org/abs/2104.00298
"""

from __future__ import annotations

import re

from scenecls.models.registry import BUILT_IN, BackboneSpec, register

_BLOCK = re.compile(r"^block(\d+[a-z])_")


def block_of(name: str) -> str | None:
    if match := _BLOCK.match(name):
        return f"block{match.group(1)}"
    if name.startswith("stem_"):
        return "stem"
    if name.startswith("top_"):
        return "top"
    return None


def build(input_shape, weights):
    import keras

    return keras.applications.EfficientNetV2B0(
        include_top=False, weights=weights, input_shape=input_shape, include_preprocessing=True
    )


def weights_file(size: int) -> str:
    return "efficientnetv2-b0_notop.h5"


SPEC = register(
    BackboneSpec(
        name="efficientnetv2_b0",
        build=build,
        default_size=150,
        min_size=32,
        preprocessing=BUILT_IN,
        block_of=block_of,
        weights_file=weights_file,
        params=5_919_312,
        layers=270,
        blocks=23,
    )
)
