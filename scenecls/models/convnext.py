"""ConvNeXt-Tiny — Liu et al., "A ConvNet for the 2020s", CVPR 2022.

Blocks: the stem, each ``stage_S_block_B`` and the three ``downsampling_block_N`` layers between stages;
the final layer norm belongs to the last block. The model normalises its own 0-255 input.

Paper: https://arxiv.org/abs/2201.03545
"""

from __future__ import annotations

import re

from scenecls.models.registry import BUILT_IN, BackboneSpec, register

_BLOCK = re.compile(r"_(stage_\d+_block_\d+)_")
_DOWN = re.compile(r"_(downsampling_block_\d+)$")


def block_of(name: str) -> str | None:
    if match := _BLOCK.search(name):
        return match.group(1)
    if match := _DOWN.search(name):
        return match.group(1)
    if name.endswith(("_prestem_normalization", "_stem")):
        return "stem"
    return None


def build(input_shape, weights):
    import keras

    return keras.applications.ConvNeXtTiny(
        include_top=False, weights=weights, input_shape=input_shape, include_preprocessing=True
    )


def weights_file(size: int) -> str:
    return "convnext_tiny_notop.h5"


SPEC = register(
    BackboneSpec(
        name="convnext_tiny",
        build=build,
        default_size=150,
        min_size=32,
        preprocessing=BUILT_IN,
        block_of=block_of,
        weights_file=weights_file,
        params=27_820_128,
        layers=133,
        blocks=22,
    )
)
