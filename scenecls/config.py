"""Every option of a training run in one place, with the seed's recipe as defaults.

A run's ``config.json`` is this dataclass (plus what was found at run time: versions, data
fingerprint), so a run can be resumed or repeated exactly from its folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from scenecls.data.augment import AugmentConfig
from scenecls.data.mixing import Mixing
from scenecls.heads import HeadConfig

LR_SCHEDULES = ("constant", "cosine", "plateau")


@dataclass
class TrainConfig:
    data: str | None = None  # None: the data set fetch-data placed
    backbone: str = "xception"  # the seed's best: 94.28 % with 3 dense layers and 5 blocks
    weights: str = "imagenet"
    image_size: int | None = None  # None: the backbone's default
    dense: int = 3
    units: int = 64
    dropout: float = 0.3
    unfreeze: str = "5"  # blocks, "all", or a progressive schedule "1,3,5"
    unfreeze_layers: int | None = None  # instead of blocks: the last K layers
    epochs: int = 10  # phase 1, frozen backbone
    lr: float = 1e-3
    batch_size: int = 32
    finetune_epochs: int = 10  # each fine-tuning stage
    # Chosen by measurement (benchmarks/README.md, "The fine-tuning rate and its schedule"): the seed's
    # constant 1e-4 scored 0.5 points lower on each of five seeds; cosine from 2e-4 averages 1e-4.
    finetune_lr: float = 2e-4
    lr_schedule: str = "cosine"
    warmup_epochs: int = 0  # each phase's rate rises linearly from 0 over these epochs
    label_smoothing: float = 0.0
    mixup: float = 0.0  # MixUp's Beta(alpha, alpha); 0: off
    cutmix: float = 0.0  # CutMix's Beta(alpha, alpha); 0: off
    ema: float = 0.0  # momentum of the weights' moving average that is validated and saved; 0: off
    mixed_precision: str = "auto"  # auto, off, bfloat16, float16; a run records what auto resolved to
    jit: str = "auto"  # XLA: auto (Keras's: on GPUs only), on, off
    patience: int | None = None  # early stopping on val accuracy; None: off
    val_split: float = 0.2
    seed: int = 0
    split_seed: int | None = None  # the validation split's seed; None: seed. finetune keeps its parent's
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    class_weights: bool = False
    cache_images: bool = False  # keep decoded images in memory after the first epoch
    feature_cache: bool = True  # cached features (phase 1) and activations (fine-tuning); see training/
    cache_aug: int = 0  # augmented copies per image in the feature cache, besides the image itself
    finetune_copies: int = 2  # augmented copies per image in the fine-tuning activation cache
    finetune_map_aug: str = "none"  # "flip", "crop" or "flip,crop": cached activation maps changed each epoch
    parent: str | None = None  # the run a fine-tuning run started from
    tensorboard: bool = False  # TensorBoard logs in the run folder
    export_tflite: bool = True  # best.tflite beside best.keras when the run ends (fast predict)
    last_phase_epochs: int | None = None  # set when a finished run is extended: its last phase's length

    @property
    def mixing(self) -> Mixing:
        return Mixing(mixup=self.mixup, cutmix=self.cutmix)

    @property
    def validation_seed(self) -> int:
        """The seed of the validation split: a fine-tuning run's parent's, so that the child never
        validates on images its parent trained on; else the run's own."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def head(self) -> HeadConfig:
        return HeadConfig(dense=self.dense, units=self.units, dropout=self.dropout)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["augment"] = self.augment.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig(**values["augment"])
        return cls(**values)
