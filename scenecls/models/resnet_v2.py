"""ResNet50V2 — He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016.

Blocks: the stem (``conv1``, ``pool1``), the bottleneck blocks ``conv2_block1`` ... ``conv5_block3`` and
the final ``post`` batch norm and activation.

Paper: https://arxiv.org/abs/1603.05027
"""

from __future__ import annotations

import re

from scenecls.models.registry import SCALE_MINUS_ONE_TO_ONE, BackboneSpec, register

_BLOCK = re.compile(r"^(conv\d_block\d+)_")


def block_of(name: str) -> str | None:
    if match := _BLOCK.match(name):
        return match.group(1)
    if name.startswith(("conv1_", "pool1_")):
        return "stem"
    if name.startswith("post_"):
        return "post"
    return None


def build(input_shape, weights):
    import keras

    return keras.applications.ResNet50V2(include_top=False, weights=weights, input_shape=input_shape)


def weights_file(size: int) -> str:
    return "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"


SPEC = register(
    BackboneSpec(
        name="resnet50_v2",
        build=build,
        default_size=150,
        min_size=32,
        preprocessing=SCALE_MINUS_ONE_TO_ONE,
        block_of=block_of,
        weights_file=weights_file,
        params=23_564_800,
        layers=190,
        blocks=18,
    )
)
