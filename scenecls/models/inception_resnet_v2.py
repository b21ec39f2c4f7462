"""Inception-ResNet-v2 — Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", AAAI 2017.

Blocks: the stem, ``mixed_5b``, ten ``block35``, ``mixed_6a``, twenty ``block17``, ``mixed_7a``, ten
``block8`` and the final ``conv_7b``. Branch convolutions carry generated names; the graph places them.

Paper: https://arxiv.org/abs/1602.07261
"""

from __future__ import annotations

import re

from scenecls.models.registry import SCALE_MINUS_ONE_TO_ONE, BackboneSpec, register

_CELL = re.compile(r"^(block35|block17|block8)_(\d+)(?:_|$)")
_REDUCTION = re.compile(r"^(mixed_5b|mixed_6a|mixed_7a|conv_7b)(?:_|$)")


def block_of(name: str) -> str | None:
    if match := _CELL.match(name):
        return f"{match.group(1)}_{match.group(2)}"
    if match := _REDUCTION.match(name):
        return match.group(1)
    return None


def build(input_shape, weights):
    import keras

    return keras.applications.InceptionResNetV2(include_top=False, weights=weights, input_shape=input_shape)


def weights_file(size: int) -> str:
    return "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"


SPEC = register(
    BackboneSpec(
        name="inception_resnet_v2",
        build=build,
        default_size=150,
        min_size=75,
        preprocessing=SCALE_MINUS_ONE_TO_ONE,
        block_of=block_of,
        weights_file=weights_file,
        params=54_336_736,
        layers=780,
        blocks=45,
    )
)
