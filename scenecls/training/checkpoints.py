"""How a phase keeps its checkpoints: ``last.keras`` after every epoch, ``best.keras`` when it improved.

Two ways, one interface. :class:`ModelCheckpoints` writes the whole model every epoch. While the
backbone is frozen and the head trains on cached features, an epoch takes a fraction of a second but a
whole model file takes 0.3 s (MobileNetV2) to well over a second (InceptionResNetV2) to write, all of
it unchanged backbone; so :class:`HeadCheckpoints` writes only what changes — the head's weights and
the optimizer's state, kilobytes — and writes the model files once, when the phase ends or is
interrupted. After a crash, ``--resume`` puts the last head checkpoint back on the model saved at the
start of the phase, so nothing trained is lost either way.
"""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path

import numpy as np

from scenecls import runs
from scenecls.classifier import save_model
from scenecls.errors import SceneclsError, first_line
from scenecls.files import atomic_path

LAST_HEAD = "last_head.npz"
BEST_HEAD = "best_head.npz"


class ModelCheckpoints:
    """The whole model, every epoch; ``best.keras`` is a copy of ``last.keras``, never a second save."""

    def __init__(self, model, run_dir: Path) -> None:
        self.model = model
        self.run_dir = run_dir
        self.pending = False  # True while checkpoints newer than last.keras exist (state.json says so)

    def begin(self, resumed: bool) -> None:
        """Called before the phase's first epoch (``resumed``: the run's state says ``pending``)."""

    def save_last(self) -> None:
        save_model(self.model, self.run_dir / runs.LAST)

    def save_best(self) -> None:
        runs.copy_atomic(self.run_dir / runs.LAST, self.run_dir / runs.BEST)

    def finish(self, *, best_in_phase: bool, continue_from_best: bool) -> None:
        """Bring the model files up to date; with ``continue_from_best`` the model (and ``last.keras``)
        go on from this phase's best epoch, as early stopping wants."""
        if best_in_phase and continue_from_best:
            self.model.load_weights(self.run_dir / runs.BEST)
            runs.copy_atomic(self.run_dir / runs.BEST, self.run_dir / runs.LAST)

    def discard(self) -> None:
        """Remove what only ``finish`` needed, once the run's state no longer points at it."""


class HeadCheckpoints(ModelCheckpoints):
    """The head and its optimizer state every epoch; the model files when the phase ends.

    ``trainer`` is the head model that shares the classifier's head layers and optimizer (see
    :func:`scenecls.caches.features.head_model`).
    """

    def __init__(self, model, trainer, run_dir: Path) -> None:
        super().__init__(model, run_dir)
        self.trainer = trainer
        self._best_saved = False  # best_head.npz holds a best epoch that best.keras does not have yet
        self._best_is_last = False  # ... and it is the last epoch too: best.keras can be a copy

    def begin(self, resumed: bool) -> None:
        """Save the model the head checkpoints will be put back on; or, resuming, put them back."""
        if resumed:
            self.restore(LAST_HEAD)
            self.pending = True
            self._best_saved = (self.run_dir / BEST_HEAD).is_file()
            return
        self.discard()  # left by a phase that did not finish cleanly
        if not self.trainer.optimizer.built:  # saved built, it loads without Keras's mismatch warning
            self.trainer.optimizer.build(self.trainer.trainable_variables)
        save_model(self.model, self.run_dir / runs.LAST)

    def save_last(self) -> None:
        save_head(self.trainer, self.run_dir / LAST_HEAD)
        self.pending = True
        self._best_is_last = False

    def save_best(self) -> None:
        runs.copy_atomic(self.run_dir / LAST_HEAD, self.run_dir / BEST_HEAD)
        self._best_saved = self._best_is_last = True

    def restore(self, name: str) -> None:
        load_head(self.trainer, self.run_dir / name)

    def finish(self, *, best_in_phase: bool, continue_from_best: bool) -> None:
        """Write ``best.keras`` and ``last.keras`` from the head checkpoints.

        Also called on Ctrl-C, when the model may be mid-epoch: the files get the last finished epoch.
        """
        if self.pending:
            if self._best_saved and not self._best_is_last:
                self.restore(BEST_HEAD)
                save_model(self.model, self.run_dir / runs.BEST)
            self.restore(LAST_HEAD)
            save_model(self.model, self.run_dir / runs.LAST)
            if self._best_saved and self._best_is_last:
                runs.copy_atomic(self.run_dir / runs.LAST, self.run_dir / runs.BEST)
            self.pending = self._best_saved = False
        super().finish(best_in_phase=best_in_phase, continue_from_best=continue_from_best)

    def discard(self) -> None:
        for name in (LAST_HEAD, BEST_HEAD):
            with contextlib.suppress(OSError):
                (self.run_dir / name).unlink()


def save_head(trainer, path: Path) -> None:
    """The head's weights (trainable or not) and its optimizer's variables, in order, as ``.npz``."""
    arrays = {f"weight_{i}": np.asarray(v) for i, v in enumerate(trainer.weights)}
    if trainer.optimizer is not None and trainer.optimizer.built:
        arrays |= {f"optimizer_{i}": np.asarray(v) for i, v in enumerate(trainer.optimizer.variables)}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def load_head(trainer, path: Path) -> None:
    """Put a :func:`save_head` checkpoint back; refuse one that does not fit this head."""
    try:
        with np.load(path) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SceneclsError(f"cannot read the head checkpoint {path}: {first_line(exc)}") from exc
    optimizer = trainer.optimizer
    saved_optimizer = sorted((k for k in arrays if k.startswith("optimizer_")), key=_index)
    if saved_optimizer and not optimizer.built:
        optimizer.build(trainer.trainable_variables)
    targets = [
        ("weight", list(trainer.weights)),
        ("optimizer", list(optimizer.variables) if saved_optimizer else []),
    ]
    for prefix, variables in targets:
        names = sorted((k for k in arrays if k.startswith(prefix + "_")), key=_index)
        shapes = [tuple(v.shape) for v in variables]
        if [arrays[n].shape for n in names] != shapes:
            raise SceneclsError(f"the head checkpoint {path} does not fit this model; cannot resume")
        for name, variable in zip(names, variables, strict=True):
            variable.assign(arrays[name])


def _index(name: str) -> int:
    return int(name.rsplit("_", 1)[1])
