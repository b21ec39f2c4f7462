"""Losses a scenecls model may be compiled with, registered so that a saved model (its optimizer and
loss included) loads back in Keras's safe mode."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="scenecls")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy against integer labels with label smoothing: the true class's target is
    ``1 - smoothing + smoothing / k`` and every other class's ``smoothing / k`` (Szegedy et al. 2016).

    Keras's ``SparseCategoricalCrossentropy`` has no smoothing, and one-hot labels would change every
    data pipeline; this turns the integer labels into smoothed one-hot targets inside the loss.
    """

    def __init__(self, smoothing: float = 0.1, name: str = "smoothed_sparse_crossentropy", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.smoothing = float(smoothing)

    def call(self, y_true, y_pred):
        ops = keras.ops
        classes = ops.shape(y_pred)[-1]
        targets = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), classes)
        return keras.losses.categorical_crossentropy(targets, y_pred, label_smoothing=self.smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "smoothing": self.smoothing}


def classification_loss(label_smoothing: float = 0.0):
    """The loss for ``compile``: plain sparse cross-entropy, or smoothed when asked."""
    if label_smoothing:
        return SmoothedSparseCrossentropy(label_smoothing)
    return "sparse_categorical_crossentropy"
