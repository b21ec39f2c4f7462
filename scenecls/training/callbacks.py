"""Keras callbacks that report progress through a :class:`~scenecls.reporting.Reporter`."""

from __future__ import annotations

import math

import keras

from scenecls.reporting import Task


class BatchProgress(keras.callbacks.Callback):
    """Moves an epoch's progress bar after every batch, with the running loss and accuracy."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        info = " ".join(
            f"{name} {float(logs[key]):.3f}"
            for key, name in (("loss", "loss"), ("accuracy", "acc"))
            if key in logs
        )
        self.task.update(completed=batch + 1, info=info)

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.task.update(info="validating…")


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Keras's ``TerminateOnNaN``, without its message on stdout (where our results go): stops
    training at the first batch whose loss is NaN or infinite; the caller reports it."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
