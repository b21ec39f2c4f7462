"""Students: a run that learns from a teacher's calibrated probabilities as well as from its labels.

Self-training (Xie et al., "Self-training with Noisy Student", 2020) and knowledge distillation (Hinton
et al., 2015) turn unlabelled images, and a better but costlier model (an ensemble), into a better single
model. Here a *teacher* is any finished run or ensemble with the same classes; it looks once at every
training image and every image of ``--unlabelled``, and its probabilities are kept in the target cache
(:mod:`scenecls.caches.targets`), so that a second student of the same teacher reads them back. Its
temperature is inside its saved model, so its probabilities are calibrated: a 0.9 means right nine times
in ten, which is what makes them worth learning from.

What the student learns, per image:

- ``--targets hard`` (the default, measured better: see benchmarks/README.md, "Students"): unlabelled
  images the teacher gives at least ``--pseudo-confidence`` join the training images with its class as
  their label; the others are left out.
- ``--targets soft``: an unlabelled image's target is the teacher's probabilities (softened or sharpened
  by ``--distill-temperature``); a labelled image's is its label, mixed with the teacher's probabilities
  by ``--distill-weight``. A teacher without unlabelled images is always this (distillation).

Everything else is an ordinary run: the student's own augmentation, the feature and activation caches
(the unlabelled images are rows of them; soft targets travel beside the cached rows), validation and
test on labelled images only, and a run folder that ``evaluate``, ``export`` or ``report`` take as any
other. Its ``config.json`` records the teacher and the unlabelled images (``distillation``), and a
resumed student refuses to go on when either changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from scenecls import runs
from scenecls.errors import DataError, UsageError
from scenecls.progress import NullReporter
from scenecls.units import count


@dataclass(frozen=True)
class Teacher:
    run_dir: Path
    model: Path  # its best.keras (calibrated)
    sha256: str  # of that file: the key of its targets, and what a resumed student checks
    backbone: str
    ensemble: bool
    test_accuracy: float | None

    @property
    def name(self) -> str:
        return self.run_dir.name


def load_teacher(ref: str, classes: list[str]) -> Teacher:
    """The finished run or ensemble ``ref`` (a folder), checked: it has finished, and predicts exactly
    ``classes`` in that order. Each problem is one line."""
    run_dir = Path(ref)
    if not (run_dir / runs.CONFIG).is_file():
        raise UsageError(f"--teacher {ref} is not a run folder (no {runs.CONFIG})")
    status = runs.recorded_status(run_dir)
    if status != "finished" or not (run_dir / runs.BEST).is_file():
        raise UsageError(
            f"--teacher {ref} has not finished training ({status or 'never started'}): finish it first"
        )
    run = runs.Run(run_dir)
    if list(run.classes) != list(classes):
        raise UsageError(
            f"--teacher {ref} predicts other classes ({', '.join(run.classes)}) than the data set's "
            f"({', '.join(classes)})"
        )
    from scenecls.checksums import file_sha256

    recorded = run.recorded
    model = run_dir.absolute() / runs.BEST
    return Teacher(
        run_dir.absolute(),
        model,
        file_sha256(model),
        str(recorded.get("backbone") or "?"),
        bool(recorded.get("ensemble")),
        run.optional(runs.METRICS).get("test_accuracy"),
    )


def student_targets(
    labels: np.ndarray, teacher: np.ndarray, *, weight: float, temperature: float = 1.0
) -> np.ndarray:
    """Soft targets: for the ``len(labels)`` labelled rows, ``(1 - weight) x`` their one-hot label plus
    ``weight x`` the teacher's row; for the rows after them (unlabelled), the teacher's row alone. The
    teacher's rows are first taken to ``temperature`` (its logits divided by it)."""
    from scenecls.calibration import with_temperature

    teacher = np.asarray(teacher, dtype=np.float64)
    if temperature != 1.0:
        teacher = with_temperature(teacher, temperature)
    targets = teacher.copy()
    labelled = len(labels)
    one_hot = np.eye(teacher.shape[1])[np.asarray(labels, dtype=np.int64)]
    targets[:labelled] = (1.0 - weight) * one_hot + weight * teacher[:labelled]
    return targets.astype(np.float32)


def confident_rows(teacher: np.ndarray, least: float) -> np.ndarray:
    """Indices of the rows whose top probability is at least ``least``: the hard pseudo-labels kept."""
    return np.flatnonzero(np.asarray(teacher).max(axis=1) >= least)


def attach_teacher(context) -> Any:
    """The run's context with the teacher's targets in it (see the module's docstring): its training split
    grown by the unlabelled images it learns from, and ``targets`` (soft) or their pseudo-labels (hard).
    The context as it was without ``--teacher``."""
    from scenecls.caches.targets import teacher_probabilities
    from scenecls.paths import cache_dir

    config, data, reporter = context.config, context.data, context.reporter
    if config.teacher is None:
        if config.unlabelled is not None:
            raise UsageError("--unlabelled needs a --teacher run (the command line trains one first)")
        return context
    _check_options(config)
    teacher = load_teacher(config.teacher, list(data.classes))
    pool, record = _unlabelled_pool(config.unlabelled, data, reporter)
    labelled = data.train
    from scenecls.data.layout import Split

    rows = Split(list(labelled.paths) + pool, list(labelled.labels) + [-1] * len(pool))
    what = f"{count(len(labelled), 'training image')}" + (f" and {len(pool)} unlabelled" if pool else "")
    reporter.log(f"Teacher {teacher.run_dir} ({teacher.backbone}) looks at {what}")
    probabilities, reused = teacher_probabilities(
        teacher.model, teacher.sha256, rows, cache_root=cache_dir(), batch_size=config.batch_size,
        teacher=teacher.name, reporter=reporter, publish=context.distribution.chief,
        runtime=config.cache_runtime,
    )  # fmt: skip
    probabilities = np.asarray(probabilities, dtype=np.float32)
    known = np.asarray(labelled.labels, dtype=np.int64)
    agreement = float((probabilities[: len(known)].argmax(axis=1) == known).mean()) if len(known) else None
    unlabelled = probabilities[len(known) :]
    targets = None
    if config.learns_soft_targets:
        targets = student_targets(
            known, probabilities, weight=config.distill_weight, temperature=config.distill_temperature
        )
        kept = np.arange(len(pool))
        train = rows  # unlabelled rows keep label -1: the caches' keys are then the same for every teacher
    else:
        kept = confident_rows(unlabelled, config.pseudo_confidence)
        if not len(kept):
            reporter.warn(
                f"the teacher gives no unlabelled image {config.pseudo_confidence:g} or more: the student "
                "learns from the labelled images alone"
            )
        train = Split(
            list(labelled.paths) + [pool[i] for i in kept],
            list(labelled.labels) + [int(unlabelled[i].argmax()) for i in kept],
        )
    if pool:
        reporter.log(
            f"The student learns from {count(len(labelled), 'labelled image')} and "
            f"{count(len(kept), 'unlabelled image')} ({config.targets} targets)"
        )
    record.update(
        {
            "teacher": str(teacher.run_dir),
            "teacher_model_sha256": teacher.sha256,
            "teacher_backbone": teacher.backbone,
            "teacher_is_ensemble": teacher.ensemble,
            "teacher_test_accuracy": teacher.test_accuracy,
            "teacher_agreement_on_labels": agreement,
            "teacher_trained_first": config.teacher_trained_first,
            "targets": "soft" if config.learns_soft_targets else "hard",
            "targets_cache": "reused" if reused else "built",
            "labelled_images": len(labelled),
            "unlabelled_used": len(kept),
            "unlabelled_by_class": _by_class(unlabelled[kept].argmax(axis=1), data.classes)
            if len(kept)
            else {},
        }
    )
    return replace(context, data=replace(data, train=train), targets=targets, distillation=record)


def check_student(config) -> None:
    """What a student of ``config`` would refuse, said before a teacher is trained for it: its options
    together, and its unlabelled folder against its data set (each one line)."""
    from scenecls.data.pipeline import prepare_data
    from scenecls.paths import data_source

    _check_options(config)
    data = prepare_data(
        data_source(config.data), val_split=config.val_split, seed=config.validation_seed,
        exclude=config.exclude,
    )  # fmt: skip
    _unlabelled_pool(config.unlabelled, data, NullReporter())


def _check_options(config) -> None:
    if config.mixing.on:
        raise UsageError("--mixup and --cutmix mix labels; a student learns the teacher's targets: use one")


def check_resume(run_dir: Path, record: dict | None) -> None:
    """Refuse to resume a student whose teacher or unlabelled images changed since it started: its
    epochs so far learnt the targets as they were."""
    saved = runs.Run(run_dir).recorded.get("distillation")
    if not saved and not record:
        return
    if not saved or not record:
        raise DataError(
            f"{run_dir} did not start with the teacher it is resumed with; start a new run instead"
        )
    for key, what in (
        ("teacher_model_sha256", "the teacher's model"),
        ("unlabelled_digest", "the unlabelled images"),
    ):
        if saved.get(key) != record.get(key):
            raise DataError(
                f"{what} changed since {run_dir} started; resuming would learn other targets: start a "
                "new run instead"
            )


def _unlabelled_pool(folder: str | None, data, reporter) -> tuple[list[str], dict]:
    """The readable images of ``folder`` that are not copies of labelled ones, and what was found."""
    if folder is None:
        return [], {"unlabelled": None}
    from scenecls.data.images import scan_cache_path, scan_images
    from scenecls.data.layout import Split
    from scenecls.data.unlabelled import pool_images, same_bytes
    from scenecls.paths import cache_dir

    labelled = [*data.train.paths, *data.val.paths, *(data.test.paths if data.test else [])]
    images = [str(p) for p in pool_images(Path(folder), list(data.classes), labelled, option="--unlabelled")]
    # Remembered as the data set's scans are, so that the check before a teacher trains and the student's
    # own read of the folder decode each image once.
    scan = scan_images(images, scan_cache_path(Path(folder), cache_dir()), reporter=reporter)
    bad = {path for path, _ in scan.bad}
    readable = [p for p in images if p not in bad]
    if not readable:
        raise UsageError(f"--unlabelled {folder}: none of its {count(len(images), 'image')} can be read")
    if bad:
        reporter.warn(f"--unlabelled: skipped {count(len(bad), 'unreadable image')}")
    copies = same_bytes([Path(p) for p in readable], labelled)
    if copies.all():
        raise UsageError(f"--unlabelled {folder} holds the labelled images themselves (the same bytes)")
    if copies.any():
        reporter.warn(
            f"--unlabelled: left out {count(int(copies.sum()), 'copy', 'copies')} of labelled images"
        )
    pool = [p for p, copy in zip(readable, copies, strict=True) if not copy]
    record = {
        "unlabelled": str(Path(folder).absolute()),
        "unlabelled_images": len(images),
        "unlabelled_digest": Split(pool, [-1] * len(pool)).digest(),
        "unlabelled_unreadable": len(bad),
        "unlabelled_copies_of_labelled": int(copies.sum()),
    }
    return pool, record


def _by_class(labels: np.ndarray, classes) -> dict[str, int]:
    found = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, found, strict=True)}
