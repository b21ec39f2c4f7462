"""TensorBoard logs of a run: ``runs/<name>/tensorboard/<phase>/{train,validation}`` per epoch, and the
best model's confusion matrix as an image when training ends. ``tensorboard --logdir runs`` shows every
run, each phase as a run of its own on the run's global epoch axis."""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras

from scenecls.errors import UsageError
from scenecls.training.callbacks import Ledger, PhaseInfo

LOGDIR = "tensorboard"


def require_tensorboard() -> None:
    """TensorFlow writes summaries only with the ``tensorboard`` package installed: say so up front."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--tensorboard needs the tensorboard package: pip install 'scenecls[tensorboard]'")


class TensorBoardLog(keras.callbacks.Callback):
    """The epoch's history row as scalars: loss and accuracy for training and validation, and the rate.

    Keras's own ``TensorBoard`` callback counts epochs per ``fit`` and logs the model that ``fit`` trains
    (the head alone while phase 1 trains on cached features); this one logs the run's epochs and rows.
    """

    def __init__(self, ledger: Ledger, phase: PhaseInfo, logdir: Path) -> None:
        super().__init__()
        import tensorflow as tf

        self.ledger = ledger
        self._writers = {
            "": tf.summary.create_file_writer(str(logdir / phase.name / "train")),
            "val_": tf.summary.create_file_writer(str(logdir / phase.name / "validation")),
        }

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import tensorflow as tf

        row = self.ledger.row
        for prefix, writer in self._writers.items():
            with writer.as_default(step=row["epoch"]):
                for name in ("loss", "accuracy"):
                    if row[prefix + name] is not None:
                        tf.summary.scalar(f"epoch_{name}", row[prefix + name])
                if not prefix:
                    tf.summary.scalar("epoch_learning_rate", row["lr"])
            writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        for writer in self._writers.values():
            writer.close()


def log_confusion_matrix(logdir: Path, confusion, classes: list[str], *, step: int, title: str) -> None:
    """The confusion matrix, drawn as ``scenecls plot`` draws it, as an image in ``<logdir>/evaluation``."""
    import tensorflow as tf

    from scenecls.plots import plot_confusion

    with tempfile.TemporaryDirectory() as scratch:
        png = plot_confusion(confusion, classes, Path(scratch) / "confusion.png", title=title).read_bytes()
    image = tf.image.decode_png(png, channels=4)[None]
    with tf.summary.create_file_writer(str(logdir / "evaluation")).as_default(step=step):
        tf.summary.image("confusion_matrix", image)
