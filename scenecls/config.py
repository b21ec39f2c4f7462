"""Every option of a training run in one place, with the seed's recipe as defaults.

Each field that the command line sets declares there its help and the range of values it takes
(:func:`~scenecls.config_fields.option_field`); ``scenecls.cli.options`` makes the click options from them,
so a default, a range or a help text is written once, here. A run's ``config.json`` is this
dataclass (plus what was found at run time: versions, data fingerprint), so a run can be resumed or
repeated exactly from its folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from scenecls.config_fields import Option, batch_size_field, declared_option, option_field
from scenecls.data.augment import AugmentConfig
from scenecls.data.mixing import Mixing
from scenecls.frozen_pass import DEFAULT_RUNTIME, RUNTIMES
from scenecls.heads import HeadConfig
from scenecls.precision import JIT_MODES, PRECISIONS

LR_SCHEDULES = ("constant", "cosine", "plateau")
TARGET_KINDS = ("soft", "hard")  # what a student learns from a teacher on unlabelled images
MAP_AUGMENTATIONS = ("flip", "crop")  # what --finetune-map-aug may name, in the order they apply


def option_of(name: str) -> tuple[Option, Any]:
    """The command-line :class:`~scenecls.config_fields.Option` of config field ``name``, and its default."""
    return declared_option(TrainConfig, name)


@dataclass
class TrainConfig:
    data: str | None = None  # None: the data set fetch-data placed
    exclude: str | None = option_field(  # kept as an absolute path, so that a resumed run finds it
        None,
        "Leave out the images this file lists (one path per line, relative to the data folder), as "
        "`scenecls inspect --write-exclude` writes it. The images stay on disk.",
        metavar="FILE",
    )
    # The seed's best: 94.28 % with 3 dense layers and 5 blocks.
    backbone: str = option_field(
        "xception", "ImageNet backbone (scenecls backbones lists them).", kind="backbone"
    )
    weights: str = option_field("imagenet", "imagenet, none, or a weights file.")
    image_size: int | None = option_field(
        None, "Input size in pixels, 16 to 1024  [default: the backbone's]", kind="int", low=16, high=1024
    )
    dense: int = option_field(3, "Hidden dense layers in the head.", kind="int", low=0)
    units: int = option_field(64, "Units of each hidden dense layer.", kind="int", low=1)
    dropout: float = option_field(
        0.3, "Dropout after each hidden dense layer.", kind="float", low=0, high=1, high_open=True
    )
    unfreeze: str = option_field(  # blocks, "all", or a progressive schedule "1,3,5"
        "5", "Blocks to fine-tune: N, all, or stages like 1,3,5; 0 = frozen backbone only."
    )
    unfreeze_layers: int | None = option_field(
        None, "Fine-tune the last K layers instead of blocks.", kind="int", low=1
    )
    epochs: int = option_field(10, "Phase 1 epochs (frozen backbone).", kind="int", low=0)
    lr: float = option_field(1e-3, "Phase 1 learning rate (Adam).", kind="rate")
    batch_size: int = batch_size_field()
    # Chosen by measurement (benchmarks/README.md, "Epochs by measurement"): 6 epochs scored as 10 did on
    # five seeds (0.928 against 0.926) in a fifth to a quarter less time; 4 scored 0.924, below the spread.
    finetune_epochs: int = option_field(6, "Epochs of each fine-tuning stage.", kind="int", low=0)
    # Chosen by measurement (benchmarks/README.md, "The fine-tuning rate and its schedule"): the seed's
    # constant 1e-4 scored 0.5 points lower on each of five seeds; cosine from 2e-4 averages 1e-4.
    finetune_lr: float = option_field(2e-4, "Fine-tuning learning rate (Adam).", kind="rate")
    lr_schedule: str = option_field(
        "cosine",
        "cosine: decay to 0 over each phase; plateau: x0.2 after 2 epochs without a better val loss.",
        kind="choice",
        choices=LR_SCHEDULES,
    )
    warmup_epochs: int = option_field(
        0, "Raise each phase's rate linearly from 0 over this many epochs.", kind="int", low=0
    )
    label_smoothing: float = option_field(
        0.0,
        "Smooth the targets: 1 - S + S/k for the true class, S/k for the others.",
        kind="float", low=0, high=1, high_open=True,
    )  # fmt: skip
    mixup: float = option_field(  # MixUp's Beta(alpha, alpha)
        0.0, "MixUp: blend pairs of images and labels by Beta(ALPHA, ALPHA); 0 = off.",
        kind="float", low=0, high=100, metavar="ALPHA",
    )  # fmt: skip
    cutmix: float = option_field(  # CutMix's Beta(alpha, alpha)
        0.0,
        "CutMix: paste a box of another image, labels by area; 0 = off. With --mixup, each batch uses "
        "one of the two.",
        kind="float", low=0, high=100, metavar="ALPHA",
    )  # fmt: skip
    ema: float = option_field(  # momentum of the weights' moving average that is validated and saved
        0.0,
        "Validate and save a moving average of the weights (--ema alone: momentum 0.99); 0 = off.",
        kind="float", low=0, high=1, high_open=True, metavar="[MOMENTUM]", flag_value=0.99,
        show_default=False,
    )  # fmt: skip
    mixed_precision: str = option_field(  # a run records what auto resolved to
        "auto",
        "Compute in 16 bits: auto = float16 on GPUs with tensor cores, else off (slower on the CPUs "
        "measured).",
        kind="choice", choices=PRECISIONS,
    )  # fmt: skip
    jit: str = option_field(
        "auto",
        "XLA compilation: auto = on GPUs only (slower on the CPUs measured).",
        kind="choice", choices=JIT_MODES,
    )  # fmt: skip
    patience: int | None = option_field(
        None,
        "Stop a phase after this many epochs without a better val accuracy; the best weights are restored.",
        kind="int", low=1,
    )  # fmt: skip
    val_split: float = option_field(
        0.2,
        "Fraction held out for validation when there is no val/ folder; 0 trains on every image, the "
        "last epoch being the model.",
        kind="float", low=0, high=1, high_open=True,
    )  # fmt: skip
    seed: int = option_field(
        0, "Seed of the validation split, the augmentation and the weights' start.", kind="int"
    )
    split_seed: int | None = None  # the validation split's seed; None: seed. finetune keeps its parent's
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    class_weights: bool = option_field(False, "Weight the loss to balance unequal classes.", kind="flag")
    cache_images: bool = option_field(  # keep decoded images in memory after the first epoch
        False, "Keep decoded images in memory (RAM permitting).", kind="flag"
    )
    feature_cache: bool = True  # cached features (phase 1) and activations (fine-tuning); see training/
    cache_aug: int = option_field(
        0, "Augmented copies per image in the feature cache, besides the image itself.", kind="int", low=0
    )
    finetune_copies: int = option_field(
        2,
        "Augmented copies of each training image whose activations below the unfrozen blocks are cached "
        "for fine-tuning (epoch e trains on copy e mod K); 0 = fine-tune on images, freshly augmented "
        "every epoch.",
        kind="int", low=0,
    )  # fmt: skip
    finetune_map_aug: str = option_field(  # cached activation maps changed each epoch
        "none",
        "Change the cached activation maps in every fine-tuning epoch, for more variety from the same "
        "copies: flip (half of them mirrored left-right), crop (a random 80-100 % window resized back), "
        "both as flip,crop, or none.",
        kind="map_aug",
    )
    cache_runtime: str = option_field(
        DEFAULT_RUNTIME,
        "What runs the backbone's frozen part over the images when a cache is built: litert (LiteRT's CPU "
        "kernels) builds MobileNetV2's caches 1.5x and ConvNeXt's 4x as fast, values equal to TensorFlow's "
        "to float rounding but not bit for bit; each runtime's entries are kept apart.",
        kind="choice", choices=RUNTIMES,
    )  # fmt: skip
    parent: str | None = None  # the run a fine-tuning run started from
    teacher_trained_first: bool = False  # the teacher was trained by the same command, for this student
    # Learning from unlabelled images (see scenecls/training/distill.py): both kept as absolute paths.
    unlabelled: str | None = option_field(
        None,
        "Also learn from this folder of unlabelled images, with a teacher's targets (the folder is only "
        "read).",
        metavar="DIR",
    )
    teacher: str | None = option_field(
        None,
        "The run or ensemble whose calibrated probabilities the student learns from  [default: with "
        "--unlabelled, a run trained first with the same options]",
        metavar="RUN",
    )
    # Chosen by measurement (benchmarks/README.md, "Students"): on two seeds hard pseudo-labels scored 0.9293,
    # soft targets from the same teacher 0.9230; over five seeds against today's default run (0.9277), hard
    # and soft students of it scored 0.9251 and 0.9269, of a 3-run ensemble 0.9261 and 0.9247: hard and soft
    # trade places inside their spreads, and no student beats a plain run on intel-dev.
    targets: str = option_field(
        "hard",
        "What the student learns on unlabelled images: soft (the teacher's probabilities; labelled images "
        "mix them with their labels) or hard (its class, for images it gives at least --pseudo-confidence; "
        "labelled images keep their labels).",
        kind="choice", choices=TARGET_KINDS,
    )  # fmt: skip
    pseudo_confidence: float = option_field(
        0.9,
        "With --targets hard: the teacher's least confidence for an unlabelled image to be learnt.",
        kind="float", low=0, high=1, high_open=True,
    )  # fmt: skip
    distill_weight: float = option_field(
        0.5,
        "With --targets soft: the share of the teacher's probabilities in a labelled image's target (the "
        "rest is its label); 0 = labels alone.",
        kind="float", low=0, high=1,
    )  # fmt: skip
    distill_temperature: float = option_field(
        1.0,
        "With --targets soft: soften (above 1) or sharpen (below 1) the teacher's calibrated probabilities.",
        kind="float", low=0.05, high=20,
    )  # fmt: skip
    tensorboard: bool = option_field(
        False, "TensorBoard logs in the run folder (see them with: tensorboard --logdir runs).", kind="flag"
    )
    export_tflite: bool = True  # best.tflite beside best.keras when the run ends (fast predict)
    last_phase_epochs: int | None = None  # set when a finished run is extended: its last phase's length

    @property
    def mixing(self) -> Mixing:
        return Mixing(mixup=self.mixup, cutmix=self.cutmix)

    @property
    def soft_targets(self) -> bool:
        """Whether training targets are rows of class probabilities (MixUp, CutMix, a teacher's soft
        targets) rather than class indices: the loss and the pipelines follow."""
        return self.mixing.on or (self.teacher is not None and self.learns_soft_targets)

    @property
    def learns_soft_targets(self) -> bool:
        """A student's targets are the teacher's probabilities: with ``--targets soft``, and always without
        unlabelled images (``--targets`` chooses for those; on labelled ones alone, distillation is soft)."""
        return self.targets == "soft" or self.unlabelled is None

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
