"""An exponential moving average of the weights (``--ema``): validated, kept as best and saved.

Keras's optimizers keep the average themselves (``use_ema``): one slot per trainable variable, updated
after every step. Keras's ``SwapEMAWeights`` callback swaps it in for validation; it does not say what a
checkpoint holds, and ours must both be the model a user predicts with and let ``--resume`` go on
exactly. So one rule for every checkpoint (``last.keras``, ``best.keras``, the head checkpoints): **the
model's weights are the average and the optimizer's average slots hold the raw training weights**.

* :class:`ValidateAverage` swaps the average in while Keras validates, so the epoch's val accuracy —
  and with it ``best.keras`` — is the average's;
* :class:`AverageIntoModel` swaps it in before the checkpoint is written, :class:`AverageOutOfModel`
  swaps back after, and training goes on from the raw weights;
* resuming in the middle of a phase swaps once after loading (:func:`swap`), and a finished phase goes
  on into the next one with the average (:func:`adopt_average`), as its files hold it.
"""

from __future__ import annotations

import keras


def _pairs(optimizer):
    """``(weight, its average)`` for every trainable weight the optimizer averages."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # under float16's loss scaling
    averages = getattr(optimizer, "_model_variables_moving_average", None) or []
    return [(v, a) for v, a in zip(optimizer._trainable_variables, averages, strict=True) if a is not None]


def swap(optimizer) -> None:
    """Exchange the weights and their averages (a second call undoes the first)."""
    for variable, average in _pairs(optimizer):
        held = keras.ops.convert_to_numpy(variable)
        variable.assign(average)
        average.assign(held)


def adopt_average(optimizer) -> None:
    """Set the weights to their averages (the phase is over; what it saved is the average)."""
    for variable, average in _pairs(optimizer):
        variable.assign(average)


class ValidateAverage(keras.callbacks.Callback):
    def __init__(self, optimizer) -> None:
        super().__init__()
        self.optimizer = optimizer

    def on_test_begin(self, logs: dict | None = None) -> None:
        swap(self.optimizer)

    def on_test_end(self, logs: dict | None = None) -> None:
        swap(self.optimizer)


class AverageIntoModel(keras.callbacks.Callback):
    """Before the epoch's checkpoint: the model holds the average."""

    def __init__(self, optimizer) -> None:
        super().__init__()
        self.optimizer = optimizer

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        swap(self.optimizer)


class AverageOutOfModel(AverageIntoModel):
    """After the epoch's checkpoint: the raw weights train on."""
