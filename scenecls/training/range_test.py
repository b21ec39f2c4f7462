"""The learning-rate range test (Smith 2017; fastai's ``lr_find``): train for a few dozen batches while
the rate grows exponentially from tiny to huge, record the loss, and suggest a rate from the curve.

For the head phase it runs on the cached backbone features (seconds), for a fine-tuning phase on
images through the unfrozen blocks, from a run's best model. Nothing is saved: the model is thrown
away afterwards.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from scenecls.config import TrainConfig
from scenecls.errors import UsageError
from scenecls.progress import NullReporter, Reporter

SMOOTHING = 0.98  # exponential moving average of the loss, as fastai smooths it
STOP_FACTOR = 4.0  # stop once the smoothed loss is this many times its best: the rate is too high


FALL = 0.10  # a loss that fell by less than this from its start is flat: a model trained already
EDGE = 1.5  # the edge of the flat part: the highest rate whose smoothed loss is within this of the lowest


@dataclass
class LrFindResult:
    phase: str
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed
    min_loss_lr: float = math.nan  # the rate at the lowest smoothed loss
    steepest_lr: float = math.nan  # the rate where the smoothed loss falls fastest
    edge_lr: float = math.nan  # the highest rate before the loss rises past EDGE x its lowest
    suggestion: float = math.nan
    rule: str = ""  # how the suggestion was chosen

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analyse(lrs: list[float], raw_losses: list[float]) -> dict[str, Any]:
    """Smoothed losses (debiased EMA), the rates at their minimum, steepest descent and edge, and a
    suggestion: a tenth of the rate at the lowest loss when the loss fell (fastai's rule for a new
    head); a tenth of the edge rate when it stayed flat and then rose, as it does from a model whose
    head is trained already (fine-tuning), where the lowest point is noise."""
    smoothed, average = [], 0.0
    for i, loss in enumerate(raw_losses, start=1):
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        smoothed.append(average / (1 - SMOOTHING**i))
    if len(smoothed) < 3:
        raise UsageError("the range test stopped after fewer than 3 batches; give more --steps or data")
    values = np.asarray(smoothed)
    skip = max(1, len(values) // 10)  # the first batches: the average is still settling
    best = skip + int(np.argmin(values[skip:]))
    slope = np.gradient(values, np.log(np.asarray(lrs)))
    steepest = skip + int(np.argmin(slope[skip : best + 1])) if best > skip else best
    within = np.flatnonzero(values <= EDGE * values[best])
    edge = int(within[within >= best].max()) if len(within) else best
    fell = (values[skip] - values[best]) / values[skip] >= FALL
    return {
        "losses": smoothed,
        "min_loss_lr": float(lrs[best]),
        "steepest_lr": float(lrs[steepest]),
        "edge_lr": float(lrs[edge]),
        "suggestion": float(lrs[best] if fell else lrs[edge]) / 10,
        "rule": "lowest loss / 10" if fell else "edge of the flat loss / 10",
    }


def lr_find(
    config: TrainConfig,
    *,
    phase: str = "head",
    start_model: Path | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    steps: int = 100,
    reporter: Reporter | None = None,
) -> LrFindResult:
    """Run the range test for ``phase`` (``head``, or ``finetune``: the first stage of ``--unfreeze``)
    of the recipe in ``config``, from ``start_model`` (a run's best model) or a new classifier."""
    from scenecls.data.pipeline import finite_dataset_warnings_silenced
    from scenecls.training.context import prepare_model, start_run
    from scenecls.training.recipe import compile_recipe
    from scenecls.training.sources import epoch_source, image_source
    from scenecls.unfreeze import UnfreezePolicy

    if not 0 < start_lr < end_lr:
        raise UsageError(f"--start-lr must be above 0 and below --end-lr, got {start_lr:g} and {end_lr:g}")
    if phase not in ("head", "finetune"):
        raise UsageError(f"--phase takes head or finetune, got {phase!r}")
    reporter = reporter or NullReporter()
    learner = prepare_model(start_run(config, reporter=reporter), start_model)
    policy = UnfreezePolicy("blocks", 0)
    if phase == "finetune":
        stages = [p for p in learner.context.phases if p.name != "head"]
        if not stages:
            raise UsageError("--phase finetune needs something to unfreeze: --unfreeze N or all")
        policy = stages[0].policy
    learner.unfreeze(policy)
    # The recipe's own loss (soft labels under --mixup), at a plain rate the test sets batch by batch.
    compile_recipe(learner.model, config, start_lr, averaging=False)
    source, _ = epoch_source(learner, policy, image_source(learner))
    task = reporter.task(f"Range test ({phase})", total=steps, unit="batches")
    test = RangeTest(start_lr, end_lr, steps, source.trainer.optimizer, task)
    try:
        with finite_dataset_warnings_silenced():
            source.trainer.fit(
                source.train_data,
                epochs=math.ceil(steps / max(1, source.steps)) + 1,
                verbose=0,
                shuffle=False,
                callbacks=[*source.callbacks(), test],
            )
    finally:
        task.close()
    return LrFindResult(phase, test.lrs, **analyse(test.lrs, test.losses))


class RangeTest(keras.callbacks.Callback):
    """Sets an exponentially growing rate before each batch and records each batch's own loss (Keras
    logs the epoch's running mean; a batch's loss is recovered from two consecutive means). Stops after
    ``steps`` batches, or once the loss is not finite or :data:`STOP_FACTOR` times its best."""

    def __init__(self, start: float, end: float, steps: int, optimizer, task=None) -> None:
        super().__init__()
        self.start, self.end, self.steps, self.optimizer, self.task = start, end, steps, optimizer, task
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self._mean, self._in_epoch, self._lr = 0.0, 0, start
        self._average, self._best = 0.0, math.inf

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._mean, self._in_epoch = 0.0, 0

    def on_train_batch_begin(self, batch, logs=None) -> None:
        # Recorded when the batch ends: Keras begins one more "batch" at the end of data it cannot count.
        self._lr = self.start * (self.end / self.start) ** (len(self.lrs) / max(1, self.steps - 1))
        self.optimizer.learning_rate.assign(self._lr)

    def on_train_batch_end(self, batch, logs=None) -> None:
        mean = float((logs or {}).get("loss", math.nan))
        self._in_epoch += 1
        loss = self._in_epoch * mean - (self._in_epoch - 1) * self._mean
        self._mean = mean
        if self.task is not None:
            self.task.advance()
        if not math.isfinite(loss):
            self.model.stop_training = True
            return
        self.lrs.append(self._lr)
        self.losses.append(loss)
        # Judged on the smoothed loss, as fastai does: one noisy batch must not end the test.
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * loss
        smoothed = self._average / (1 - SMOOTHING ** len(self.losses))
        self._best = min(self._best, smoothed)
        too_high = len(self.losses) > 5 and smoothed > STOP_FACTOR * self._best
        if len(self.lrs) >= self.steps or too_high:
            self.model.stop_training = True
