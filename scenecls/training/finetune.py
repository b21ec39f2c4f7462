"""Fine-tuning a finished run again: a new run that starts from the parent's best model, validates on
the very images the parent held out and records where it came from (``scenecls finetune``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scenecls.config import TrainConfig
from scenecls.data.augment import AugmentConfig
from scenecls.errors import ModelError
from scenecls.progress import NullReporter, Reporter
from scenecls.runs import Run


def finetune_config(
    parent: Path,
    options: dict[str, Any],
    *,
    augment: AugmentConfig,
    data: Path | None = None,
    exclude: str | None = None,
    backbone: str | None = None,
    export: bool = True,
    feature_cache: bool = True,
    reporter: Reporter | None = None,
) -> TrainConfig:
    """The recipe of a fine-tuning run of ``parent``: its own recipe with ``options`` (the fine-tuning
    phase's: ``unfreeze``, ``finetune_epochs``, ``finetune_lr``, ...) over it, no head phase, and the
    parent's validation split. Without ``data``, the parent's images are checked to be the ones it
    trained on (another set is refused in one line); ``backbone``, when given, must be the parent's."""
    run = Run(parent)
    parent_config = run.config
    if backbone and backbone != parent_config.backbone:
        raise ModelError(f"{parent} holds a {parent_config.backbone} model, not {backbone}")
    if data is None:  # it validates on what the parent held out: the parent's very images, or refused
        run.prepared_data(reporter=reporter or NullReporter())
    return TrainConfig.from_dict(
        {
            **parent_config.to_dict(),
            **options,
            "augment": augment.to_dict(),
            "data": str(data) if data else parent_config.data,
            "exclude": exclude or parent_config.exclude,
            "epochs": 0,
            "weights": "none",
            "parent": str(parent),
            "teacher_trained_first": False,  # a student's child keeps its teacher, which was not made for it
            "split_seed": parent_config.validation_seed,  # validate on what the parent held out
            "export_tflite": export,
            "feature_cache": feature_cache,
        }
    )
