"""The recipe of a run: its phases (the head on a frozen backbone, then one fine-tuning stage per
``--unfreeze`` step), each phase's learning rate and schedule, and compiling the model for a phase."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from scenecls.config import TrainConfig
from scenecls.errors import UsageError
from scenecls.precision import jit_compile
from scenecls.unfreeze import UnfreezePolicy, parse_unfreeze


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    lr: float
    policy: UnfreezePolicy


def plan_phases(config: TrainConfig) -> list[Phase]:
    """Phase 1 (``head``) unless ``epochs`` is 0, then one ``finetune`` stage per unfreeze step.

    ``last_phase_epochs`` (set when a finished run is extended) overrides the last phase's length.
    """
    phases = []
    if config.epochs > 0:
        phases.append(Phase("head", config.epochs, config.lr, UnfreezePolicy("blocks", 0)))
    if config.unfreeze_layers:
        stages = [UnfreezePolicy("layers", config.unfreeze_layers)]
    else:
        stages = [p for p in parse_unfreeze(config.unfreeze) if not p.frozen]
    if config.finetune_epochs > 0:
        for i, policy in enumerate(stages, start=1):
            name = "finetune" if len(stages) == 1 else f"finetune{i}"
            phases.append(Phase(name, config.finetune_epochs, config.finetune_lr, policy))
    if not phases:
        raise UsageError("nothing to train: --epochs and --finetune-epochs (or --unfreeze) are all 0")
    if config.last_phase_epochs:
        phases[-1] = replace(phases[-1], epochs=config.last_phase_epochs)
    return phases


def learning_rate(phase: Phase, config: TrainConfig, steps: int) -> Any:
    """The phase's rate: constant (a float), or a schedule over the phase's steps — cosine decay to 0,
    either after a linear warm-up from 0 over ``warmup_epochs`` (so that a freshly unfrozen backbone is
    not hit at full rate)."""
    import keras

    total = max(1, steps * phase.epochs)
    warmup = min(steps * config.warmup_epochs, total - 1)
    if config.lr_schedule != "cosine" and not warmup:
        return phase.lr
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else phase.lr,
        decay_steps=max(1, total - warmup),
        alpha=0.0 if config.lr_schedule == "cosine" else 1.0,  # alpha 1: constant after warm-up
        warmup_target=phase.lr if warmup else None,
        warmup_steps=warmup,
    )


def compile_phase(model, phase: Phase, config: TrainConfig, steps: int) -> None:
    """Adam at the phase's :func:`learning_rate`, with the run's loss, metrics and moving average."""
    compile_recipe(model, config, learning_rate(phase, config, steps))


def compile_recipe(model, config: TrainConfig, lr: Any, *, averaging: bool = True) -> None:
    """Adam at ``lr`` with the recipe's loss (soft labels under ``--mixup``/``--cutmix``, label
    smoothing), metrics, XLA setting and, with ``averaging``, its moving average of the weights: the
    one place a model is compiled for training, so a range test measures the loss training will see."""
    import keras

    from scenecls.losses import classification_loss

    moving = {"use_ema": True, "ema_momentum": config.ema} if config.ema and averaging else {}
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr, **moving),
        loss=classification_loss(config.label_smoothing, soft_labels=config.soft_targets),
        jit_compile=jit_compile(config.jit),
        metrics=["accuracy"],
    )
