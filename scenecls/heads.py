"""Classifier tops: global average pooling, N x (Dense + ReLU + Dropout), softmax.

The head's layers are made once and can be applied to a backbone's feature map or, for the frozen-phase
feature cache, to features computed earlier: the same weights serve both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

POOL_LAYER = "head_pool"  # the head's first layer: pools the backbone's feature map


@dataclass(frozen=True)
class HeadConfig:
    dense: int = 3  # hidden fully connected layers (the seed tried 0-3)
    units: int = 64
    dropout: float = 0.3

    def __post_init__(self) -> None:
        if self.dense < 0:
            raise ValueError("dense must be >= 0")
        if self.units < 1:
            raise ValueError("units must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


def head_layers(num_classes: int, config: HeadConfig) -> list:
    """The head's layers after pooling, in order, named ``head_dense_1`` ... ``predictions``."""
    import keras

    layers = []
    for i in range(1, config.dense + 1):
        layers.append(keras.layers.Dense(config.units, activation="relu", name=f"head_dense_{i}"))
        if config.dropout:
            layers.append(keras.layers.Dropout(config.dropout, name=f"head_dropout_{i}"))
    # float32 whatever the compute precision: a 16-bit softmax rounds small probabilities to 0.
    layers.append(keras.layers.Dense(num_classes, activation="softmax", name="predictions", dtype="float32"))
    return layers


def apply_head(feature_map, num_classes: int, config: HeadConfig):
    """Pool a backbone's ``(h, w, c)`` feature map and classify it; returns the softmax tensor."""
    import keras

    x = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)(feature_map)
    for layer in head_layers(num_classes, config):
        x = layer(x)
    return x


def head_param_count(features: int, num_classes: int, config: HeadConfig) -> int:
    """Weights in the head for ``features`` pooled channels (what ``apply_head`` builds)."""
    total, width = 0, features
    for _ in range(config.dense):
        total += width * config.units + config.units
        width = config.units
    return total + width * num_classes + num_classes
