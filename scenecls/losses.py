"""Losses a scenecls model may be compiled with, registered so that a saved model (its optimizer and
loss included) loads back in Keras's safe mode."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="scenecls")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy against integer labels with label smoothing: the true class's target is
    ``1 - smoothing + smoothing / k`` and every other class's ``smoothing / k`` (Szegedy et al. 2016).

    Keras's ``SparseCategoricalCrossentropy`` has no smoothing, and one-hot labels would change every
    data pipeline; this turns the integer labels into smoothed one-hot targets inside the loss. It also
    takes soft label rows (``k`` columns), as MixUp and CutMix make them (:mod:`scenecls.data.mixing`).
    """

    def __init__(self, smoothing: float = 0.1, name: str = "smoothed_sparse_crossentropy", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.smoothing = float(smoothing)

    def call(self, y_true, y_pred):
        ops = keras.ops
        classes = ops.shape(y_pred)[-1]
        if len(y_true.shape) == 2 and y_true.shape[-1] == y_pred.shape[-1] and y_true.shape[-1] != 1:
            targets = ops.cast(y_true, y_pred.dtype)  # already rows of class weights
        else:
            targets = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), classes)
        return keras.losses.categorical_crossentropy(targets, y_pred, label_smoothing=self.smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "smoothing": self.smoothing}


def classification_loss(label_smoothing: float = 0.0, *, soft_labels: bool = False):
    """The loss for ``compile``: plain sparse cross-entropy, or smoothed, or for soft labels."""
    if label_smoothing or soft_labels:
        return SmoothedSparseCrossentropy(label_smoothing)
    return "sparse_categorical_crossentropy"
