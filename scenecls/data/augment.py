"""Training-time augmentation as Keras preprocessing layers, with the seed's ranges.

The seed used Keras 2's ``ImageDataGenerator(rotation_range=40, width_shift_range=0.2,
height_shift_range=0.2, shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode="nearest")``.
The same ranges are expressed here with the layers that replaced it. Note that ``ImageDataGenerator``
took ``shear_range`` in *degrees*, so the seed's 0.2 is a very slight shear; we keep that meaning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 40.0  # degrees, either way
    shift: float = 0.2  # fraction of width and height
    shear: float = 0.2  # degrees, either way (ImageDataGenerator's unit)
    zoom: float = 0.2  # fraction in or out
    flip: bool = True  # horizontal

    @property
    def enabled(self) -> bool:
        return bool(self.rotation or self.shift or self.shear or self.zoom or self.flip)

    def to_dict(self) -> dict:
        return asdict(self)


NO_AUGMENTATION = AugmentConfig(rotation=0.0, shift=0.0, shear=0.0, zoom=0.0, flip=False)


def build_augmentation(config: AugmentConfig, seed: int | None = None):
    """A ``keras.Sequential`` that augments a batch of 0-255 float images; None when disabled."""
    import keras

    if not config.enabled:
        return None
    fill = {"fill_mode": "nearest"}
    layers = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation / 360.0, seed=seed, **fill))
    if config.shift:
        layers.append(keras.layers.RandomTranslation(config.shift, config.shift, seed=seed, **fill))
    if config.shear:
        factor = abs(math.tan(math.radians(config.shear)))
        layers.append(keras.layers.RandomShear(x_factor=factor, seed=seed, **fill))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, config.zoom, seed=seed, **fill))
    return keras.Sequential(layers, name="augmentation")
