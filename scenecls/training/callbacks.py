"""Everything that happens per epoch, as Keras callbacks with one job each.

A phase is one ``fit``; these callbacks run in the order :func:`scenecls.training.loop.phase_callbacks`
gives them, sharing one :class:`Ledger` (the run's state, its history and the epoch being closed):

* :class:`StopOnNonFiniteLoss` stops at the first NaN batch (Keras's ``TerminateOnNaN`` prints to stdout,
  where our results go);
* :class:`HistoryRow` turns an epoch's logs into a ``history.csv`` row;
* :class:`EarlyStopping` and :class:`ReduceLROnPlateau` keep their counters in the run's state, so that
  ``--resume`` continues them (Keras's own keep them in memory only);
* :class:`RunCheckpoint` writes ``last.keras``/``best.keras`` (or the head checkpoints), ``history.csv``
  and ``state.json`` together, with Ctrl-C held back, so they always agree (Keras's ``ModelCheckpoint``
  and ``BackupAndRestore`` write one file each, non-atomically); without validation images
  (``--val-split 0``) the best model is the last;
* :class:`scenecls.training.tensorboard.TensorBoardLog` writes the row's scalars, one log folder per phase;
* :class:`BatchProgress` draws the epoch's progress bar and logs the epoch's line.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from scenecls import runs
from scenecls.errors import SceneclsError
from scenecls.progress import Reporter, Task

PLATEAU_PATIENCE = 2
PLATEAU_FACTOR = 0.2
MIN_LR = 1e-7


@dataclass
class Ledger:
    """What the callbacks of one run share: its persistent state (a ``RunState``), its history, the
    epoch being closed, and the state as last written (what Ctrl-C may rely on)."""

    state: Any
    history: list[dict[str, Any]]
    run_dir: Path
    started: float  # time.monotonic() at which the run (all its resumptions) would have begun
    row: dict[str, Any] | None = None
    saved: Any = None
    phase_started: float = 0.0
    checkpoints: Any = None  # the phase's ModelCheckpoints while it runs
    phase: PhaseInfo | None = None  # the phase in progress
    first_batch: float | None = None  # seconds from this process's start to its first training batch
    batches_begun: bool = False  # whether that batch was seen (its figure may be None: no /proc)

    def write_state(self) -> None:
        self.state.seconds = time.monotonic() - self.started
        runs.Run(self.run_dir).write_state(self.state)
        self.saved = copy.deepcopy(self.state)


@dataclass(frozen=True)
class PhaseInfo:
    """The phase a ``fit`` runs, as the callbacks need it."""

    index: int
    name: str
    lr: float
    first_epoch: int  # the run's epoch number of this phase's epoch 0, minus one


class TrainingDiverged(SceneclsError):
    """The loss stopped being a number; the run keeps the last finished epoch and is marked failed."""

    def __init__(self, run_dir: Path, epoch: int, phase: PhaseInfo, best_epoch: int) -> None:
        kept = f"best.keras keeps epoch {best_epoch}" if best_epoch else "no epoch finished to keep"
        option = "--lr" if phase.name == "head" else "--finetune-lr"
        super().__init__(
            f"training diverged: the loss is not finite in epoch {epoch} ({phase.name}, lr {phase.lr:g}); "
            f"{kept}. Train again with a lower {option}"
        )
        self.run_dir = run_dir


@contextlib.contextmanager
def interrupts_deferred():
    """Hold back Ctrl-C while the run folder is updated, and deliver it right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple] = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def current_lr(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def finite(*values: float | None) -> bool:
    return all(value is not None and math.isfinite(value) for value in values)


def _row_is_finite(row: dict[str, Any]) -> bool:
    if not validated(row):  # --val-split 0: the training loss is all there is
        return finite(row["loss"])
    return finite(row["loss"], row["val_loss"], row["val_accuracy"])


def validated(row: dict[str, Any]) -> bool:
    """Whether the epoch was validated (not with ``--val-split 0``; a NaN loss is still validated)."""
    return row["val_loss"] is not None or row["val_accuracy"] is not None


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is NaN or infinite; :class:`RunCheckpoint` reports it."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True


class HistoryRow(keras.callbacks.Callback):
    """The epoch's ``history.csv`` row, from its logs, the optimizer's rate and the wall time."""

    def __init__(self, ledger: Ledger, phase: PhaseInfo, optimizer) -> None:
        super().__init__()
        self.ledger, self.phase, self.optimizer = ledger, phase, optimizer
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.ledger.row = {
            "epoch": self.phase.first_epoch + epoch + 1,
            "phase": self.phase.name,
            **{key: _number(logs.get(key)) for key in ("loss", "accuracy", "val_loss", "val_accuracy")},
            "lr": current_lr(self.optimizer),
            "seconds": round(time.monotonic() - self._start, 3),
        }


def _number(value) -> float | None:
    return None if value is None else float(value)


class EarlyStopping(keras.callbacks.Callback):
    """Stop the phase after ``patience`` epochs without a better validation accuracy than the run's best."""

    def __init__(self, ledger: Ledger, patience: int) -> None:
        super().__init__()
        self.ledger, self.patience = ledger, patience

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row, state = self.ledger.row, self.ledger.state
        if not _row_is_finite(row):
            return
        state.wait = 0 if row["val_accuracy"] > state.best_val_accuracy else state.wait + 1
        if state.wait >= self.patience:
            state.stopped_early = True
            self.model.stop_training = True


class ReduceLROnPlateau(keras.callbacks.Callback):
    """Multiply the rate by :data:`PLATEAU_FACTOR` after :data:`PLATEAU_PATIENCE` epochs without a lower
    validation loss (run after :class:`HistoryRow`, so the row keeps the rate the epoch trained at)."""

    def __init__(self, ledger: Ledger, optimizer) -> None:
        super().__init__()
        self.ledger, self.optimizer = ledger, optimizer

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row, state = self.ledger.row, self.ledger.state
        if not _row_is_finite(row):
            return
        if state.plateau_best is None or row["val_loss"] < state.plateau_best:
            state.plateau_best, state.plateau_wait = row["val_loss"], 0
            return
        state.plateau_wait += 1
        if state.plateau_wait >= PLATEAU_PATIENCE:
            self.optimizer.learning_rate.assign(max(current_lr(self.optimizer) * PLATEAU_FACTOR, MIN_LR))
            state.plateau_wait = 0


class RunCheckpoint(keras.callbacks.Callback):
    """After every epoch: the checkpoints, ``history.csv`` and ``state.json``, together and atomically.

    A non-finite epoch is recorded in the history but nothing of it is saved; the model files keep the
    last finished epoch and :class:`TrainingDiverged` ends the run.
    """

    def __init__(self, ledger: Ledger, phase: PhaseInfo, checkpoints) -> None:
        super().__init__()
        self.ledger, self.phase, self.checkpoints = ledger, phase, checkpoints

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        ledger, state, row = self.ledger, self.ledger.state, self.ledger.row
        with interrupts_deferred():
            ledger.history.append(row)
            runs.write_history(ledger.run_dir / runs.HISTORY, ledger.history)
            if not _row_is_finite(row):
                if self.checkpoints.pending:  # model files from the last finished epoch's head
                    self.checkpoints.finish(
                        best_in_phase=state.best_phase == self.phase.name, continue_from_best=False
                    )
                state.head_checkpoint = False
                ledger.write_state()
                raise TrainingDiverged(ledger.run_dir, row["epoch"], self.phase, state.best_epoch)
            self.checkpoints.save_last()
            # Without validation there is nothing to choose by: the best model is the last one.
            if not validated(row) or row["val_accuracy"] > state.best_val_accuracy:
                if validated(row):
                    state.best_val_accuracy = row["val_accuracy"]
                state.best_epoch, state.best_phase = row["epoch"], self.phase.name
                self.checkpoints.save_best()
            state.phase, state.phase_epoch, state.epoch = self.phase.index, epoch + 1, row["epoch"]
            state.head_checkpoint = self.checkpoints.pending
            state.phase_seconds[self.phase.name] = round(time.monotonic() - ledger.phase_started, 3)
            ledger.write_state()


class TrackEpoch(keras.callbacks.Callback):
    """Each finished epoch's row, as ``history.csv`` has it, to the run's tracker (MLflow)."""

    def __init__(self, ledger: Ledger, tracker) -> None:
        super().__init__()
        self.ledger, self.tracker = ledger, tracker

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.tracker.epoch(self.ledger.history[-1])


class BatchProgress(keras.callbacks.Callback):
    """The epoch's progress bar (moved after every batch, with the running loss and accuracy) and, at its
    end, the epoch's line in the log."""

    def __init__(self, reporter: Reporter, ledger: Ledger, phase: PhaseInfo, steps: int, total_epochs: int):
        super().__init__()
        self.reporter, self.ledger, self.phase = reporter, ledger, phase
        self.steps, self.total_epochs = steps, total_epochs
        self.task: Task | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        number = self.phase.first_epoch + epoch + 1
        self.task = self.reporter.task(
            f"Epoch {number}/{self.total_epochs} {self.phase.name}", total=self.steps, unit="batches"
        )

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if not self.ledger.batches_begun:  # once: not a failed read of /proc on every batch
            self.ledger.batches_begun = True
            self.ledger.first_batch = process_seconds()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        info = " ".join(
            f"{name} {float(logs[key]):.3f}"
            for key, name in (("loss", "loss"), ("accuracy", "acc"))
            if key in logs
        )
        if self.task is not None:
            self.task.update(completed=batch + 1, info=info)

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self.task is not None:
            self.task.update(info="validating…")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.task is not None:
            self.task.close(summarised=True)
            self.task = None
        row = self.ledger.row
        val = ""
        if validated(row):
            val = f"val_loss {_fmt(row['val_loss'])} val_acc {_fmt(row['val_accuracy'])} "
        self.reporter.log(
            f"Epoch {row['epoch']}/{self.total_epochs} {row['phase']}: loss {_fmt(row['loss'])} "
            f"acc {_fmt(row['accuracy'])} {val}lr {row['lr']:.2g} ({row['seconds']:.1f}s)"
        )

    def on_train_end(self, logs: dict | None = None) -> None:
        self.close()

    def close(self) -> None:
        if self.task is not None:
            self.task.close()
            self.task = None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def process_seconds() -> float | None:
    """Seconds since this process started: the wait a user sees before training begins, Python's
    start-up and the imports included. Read from Linux's ``/proc``; None where there is none."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the command's name may hold spaces
        with open("/proc/uptime", encoding="ascii") as uptime:
            now = float(uptime.read().split()[0])
        return round(now - int(fields[19]) / os.sysconf("SC_CLK_TCK"), 2)  # field 22: start time
    except (OSError, ValueError, IndexError, AttributeError):
        return None
