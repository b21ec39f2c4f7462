"""A run's life in its folder: opened (its files written) or resumed (read back and checked against
the data), interrupted, failed, extended; and how it ended (:class:`TrainResult`; where it stands is
:class:`scenecls.runs.RunState`, in ``state.json``)."""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from scenecls import __version__, runs
from scenecls.config import TrainConfig
from scenecls.data.pipeline import PreparedData, same_data
from scenecls.errors import DataError, SceneclsError, UsageError, first_line
from scenecls.paths import data_source
from scenecls.runs import Run, RunState
from scenecls.training.callbacks import Ledger, TrainingDiverged
from scenecls.training.context import RunContext
from scenecls.training.recipe import plan_phases
from scenecls.training.strategy import Distribution


class TrainingInterrupted(SceneclsError):
    """Ctrl-C during training; the run folder holds everything up to the last finished epoch."""

    exit_code = 130

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"training interrupted; resume with: scenecls train --resume {run_dir}")
        self.run_dir = run_dir


@dataclass
class TrainResult:
    run_dir: Path
    status: str
    epochs: int
    best_val_accuracy: float | None  # None: trained without validation images (--val-split 0)
    best_epoch: int
    best_phase: str
    test_accuracy: float | None
    test_loss: float | None
    seconds: float
    stopped_early: bool
    unfreeze: list[dict[str, Any]] = field(default_factory=list)
    temperature: float | None = None  # the best model's calibration (None: not finished yet)
    calibration_not_applied: str | None = None  # why the temperature was left at 1, when it was
    distillation: dict | None = None  # a student's teacher and unlabelled images (see distill.py)
    # What the end of the run holds in memory, handed to the step after it (the end-of-run export) so
    # that it neither loads best.keras nor scans the data set again; not part of the record.
    best_model: Any = field(default=None, repr=False, compare=False)
    data: PreparedData | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = {
            f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name not in _IN_MEMORY
        }
        data["run_dir"] = str(self.run_dir)
        return data


_IN_MEMORY = ("best_model", "data")


def open_run(context: RunContext, resume: bool) -> Ledger:
    """The run's state and history: read back to resume, or a new run folder's files written."""
    run_dir, data, distribution = context.run_dir, context.data, context.distribution
    if resume:
        run = Run(run_dir)
        state = run.state
        if state.status != "finished":
            distribution.check_resume(run.recorded.get("distribution"), run_dir)
        # A row past the state's last epoch is one whose checkpoint never finished: it is trained again.
        history = [row for row in run.history if row["epoch"] <= state.epoch]
        ledger = Ledger(state, history, run_dir, time.monotonic() - state.seconds)
        ledger.saved = copy.deepcopy(state)
        if state.status != "finished":
            check_resume_data(run_dir, data)
        return ledger
    _write_run_files(run_dir, context.config, data, context.size, distribution, context.distillation)
    ledger = Ledger(RunState(), [], run_dir, time.monotonic())
    ledger.write_state()  # so that --resume works from the start
    return ledger


def record_interrupt(ledger: Ledger) -> None:
    """Ctrl-C: everything up to the last finished epoch is on disk; say so in ``state.json``."""
    checkpoints = ledger.checkpoints
    state = ledger.saved if ledger.saved is not None else ledger.state  # as last written
    if checkpoints is not None and checkpoints.pending:
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: --resume uses the head files
            checkpoints.finish(best_in_phase=state.best_phase == ledger.phase.name, continue_from_best=False)
    ledger.state = state
    state.status = "interrupted"
    state.head_checkpoint = checkpoints is not None and checkpoints.pending
    ledger.write_state()
    if checkpoints is not None and not checkpoints.pending:
        checkpoints.discard()


def record_failure(run_dir: Path, fresh: bool, exc: BaseException) -> None:
    state_file = run_dir / runs.STATE
    try:
        state = Run(run_dir).state if state_file.is_file() else None
    except SceneclsError:
        state = None
    if fresh and (state is None or state.epoch == 0) and not isinstance(exc, TrainingDiverged):
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    if state is not None:
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C before the epochs began, on a resume
            state.status = "interrupted"
        else:
            state.status, state.error = "failed", first_line(exc, 300)
        Run(run_dir).write_state(state)


@dataclass
class Extension:
    """A finished run's last phase given more epochs: what :func:`extend_run` planned, written only when
    the run can go on (its data checked), so that a check that fails leaves the run as it was."""

    run_dir: Path
    config: TrainConfig
    state: RunState

    def write(self) -> None:
        run = Run(self.run_dir)
        run.update_config(self.config.to_dict())
        run.write_state(self.state)


def extend_run(run_dir: Path, *, epochs: int | None = None, finetune_epochs: int | None = None) -> Extension:
    """Give a finished run's last phase more epochs (its new total), for ``train --resume RUN``; nothing
    is written here (see :class:`Extension`).

    History and checkpoints continue; the optimizer goes on with its state, and a scheduled rate
    (cosine, warm-up) along the curve of the longer phase: a cosine phase of 10 epochs extended to 20
    goes on at half its rate and decays to 0 again. A different recipe (another unfreeze, other rates)
    is a ``finetune`` child run instead.
    """
    run = Run(run_dir)
    config, state = run.config, run.state
    phases = plan_phases(config)
    last = phases[-1]
    option, wanted = ("--epochs", epochs) if last.name == "head" else ("--finetune-epochs", finetune_epochs)
    if wanted is None:
        raise UsageError(f"the last phase of {run_dir} is {last.name}: extend it with {option}")
    if state.status != "finished":
        raise UsageError(f"{run_dir} has not finished; resume it first (scenecls train --resume {run_dir})")
    if wanted <= last.epochs:
        raise UsageError(
            f"{option} {wanted}: the {last.name} phase already has {last.epochs} epochs; give more"
        )
    if last.name == "head":
        config.epochs = wanted
    else:
        config.last_phase_epochs = wanted
    state.phase, state.phase_epoch = len(phases) - 1, last.epochs
    state.status, state.stopped_early, state.wait = "interrupted", False, 0
    return Extension(run_dir, config, state)


def _write_run_files(
    run_dir: Path, config: TrainConfig, data: PreparedData, size: int, distribution: Distribution,
    distillation: dict | None = None,
) -> None:  # fmt: skip
    import keras
    import tensorflow as tf

    runs.write_json(
        run_dir / runs.CONFIG,
        {
            **config.to_dict(),
            # Where the data is from anywhere (a run is bound to it), and as it was given, for display.
            "data": os.path.abspath(data_source(config.data)),
            "data_given": config.data,
            "image_size": size,
            "data_resolved": os.path.abspath(data.index.root),
            "data_layout": data.index.layout,
            "data_fingerprint": data.index.fingerprint(),
            "data_identity": data.index.identity(),
            "classes": data.classes,
            "images": {  # labelled ones: a student's unlabelled images are counted in "distillation"
                "train": len(data.train) - (distillation or {}).get("unlabelled_used", 0),
                "val": len(data.val),
                "test": len(data.test) if data.test else 0,
                "skipped": len(data.skipped),
                "excluded": data.index.left_out,
            },
            "val_source": data.val_source,
            **({"distillation": distillation} if distillation else {}),
            "distribution": distribution.shape,
            "versions": {
                "scenecls": __version__,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "python": platform.python_version(),
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    runs.write_json(
        run_dir / runs.LABELS,
        {"classes": data.classes, "backbone": config.backbone, "image_size": [size, size]},
    )
    if data.skipped:
        runs.write_atomic(
            run_dir / "skipped.txt", "".join(f"{path}\t{reason}\n" for path, reason in data.skipped)
        )


def check_resume_data(run_dir: Path, data: PreparedData) -> None:
    """Refuse to go on with other images than the run started with: other classes, images added,
    removed or rewritten, or another exclude list (the epochs so far learnt the images as they were)."""
    saved = Run(run_dir).recorded
    if saved.get("classes") != data.classes:
        raise SceneclsError(
            f"the data's classes ({', '.join(data.classes)}) differ from the run's "
            f"({', '.join(saved.get('classes', []))}); cannot resume"
        )
    if not same_data(data, saved):
        raise DataError(
            f"the images of {run_dir}'s data set changed since it started (added, removed, rewritten, or "
            f"another exclude list: {saved.get('exclude') or 'none'} then); resuming would train on other "
            f"images: start a new run instead"
        )


def train_result(run_dir: Path, state: RunState, metrics: dict, reports: list[dict]) -> TrainResult:
    return TrainResult(
        run_dir=run_dir,
        status=state.status,
        epochs=state.epoch,
        best_val_accuracy=state.validated_best,
        best_epoch=state.best_epoch,
        best_phase=state.best_phase,
        test_accuracy=metrics.get("test_accuracy"),
        test_loss=metrics.get("test_loss"),
        seconds=round(state.seconds, 1),
        stopped_early=state.stopped_early,
        unfreeze=reports,
        temperature=metrics.get("temperature"),
        calibration_not_applied=(metrics.get("calibration") or {}).get("not_applied"),
        distillation=Run(run_dir).recorded.get("distillation") if (run_dir / runs.CONFIG).is_file() else None,
    )
