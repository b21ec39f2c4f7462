"""The training recipe: phase 1 trains the head on a frozen backbone, then each fine-tuning stage
unfreezes more of it with a lower learning rate.

After every epoch the run folder is brought up to date — ``history.csv``, ``last.keras`` (with the
optimizer state), ``best.keras`` when validation accuracy improved, and ``state.json`` saying where
training stands — so that a crash or Ctrl-C loses at most the epoch in progress, and
``--resume`` continues in the right phase and epoch.
"""

from __future__ import annotations

import contextlib
import math
import platform
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from scenecls import __version__
from scenecls.atomic import remove_stale_temporaries
from scenecls.classifier import (
    build_classifier,
    check_compatible,
    find_backbone,
    load_model,
)
from scenecls.config import TrainConfig
from scenecls.data.augment import NO_AUGMENTATION, build_augmentation
from scenecls.data.pipeline import (
    PreparedData,
    class_weights,
    finite_dataset_warnings_silenced,
    make_dataset,
    prepare_data,
)
from scenecls.errors import SceneclsError, UsageError, first_line
from scenecls.models.registry import get_spec
from scenecls.paths import cache_dir, data_source
from scenecls.reporting import NullReporter, Reporter
from scenecls.training import runs
from scenecls.training.checkpoints import HeadCheckpoints, ModelCheckpoints
from scenecls.training.features import CachedFeatures, head_model, load_or_compute
from scenecls.unfreeze import (
    UnfreezePolicy,
    UnfreezeReport,
    apply_unfreeze,
    check_policy,
    parse_unfreeze,
)

PLATEAU_PATIENCE = 2
PLATEAU_FACTOR = 0.2
MIN_LR = 1e-7


class TrainingDiverged(SceneclsError):
    """The loss stopped being a number; the run folder keeps the last finished epoch and is marked failed."""

    def __init__(self, run_dir: Path, epoch: int, phase: Phase, best_epoch: int) -> None:
        kept = f"best.keras keeps epoch {best_epoch}" if best_epoch else "no epoch finished to keep"
        option = "--lr" if phase.name == "head" else "--finetune-lr"
        super().__init__(
            f"training diverged: the loss is not finite in epoch {epoch} ({phase.name}, lr {phase.lr:g}); "
            f"{kept}. Train again with a lower {option}"
        )
        self.run_dir = run_dir


class TrainingInterrupted(SceneclsError):
    """Ctrl-C during training; the run folder holds everything up to the last finished epoch."""

    exit_code = 130

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"training interrupted; resume with: scenecls train --resume {run_dir}")
        self.run_dir = run_dir


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    lr: float
    policy: UnfreezePolicy


@dataclass
class TrainState:
    status: str = "running"  # running, interrupted, finished
    phase: int = 0  # index of the phase in progress
    phase_epoch: int = 0  # epochs finished in that phase
    epoch: int = 0  # epochs finished in all
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    best_phase: str = ""
    wait: int = 0  # epochs without improvement (early stopping)
    plateau_best: float | None = None  # lowest val loss so far (plateau schedule); None: none yet
    plateau_wait: int = 0
    stopped_early: bool = False
    head_checkpoint: bool = False  # the phase's head checkpoints are newer than last.keras
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase, all included
    feature_cache: str = "off"  # what phase 1 did with the feature cache: off, built or reused
    error: str | None = None  # why the run failed (status "failed")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainResult:
    run_dir: Path
    status: str
    epochs: int
    best_val_accuracy: float
    best_epoch: int
    best_phase: str
    test_accuracy: float | None
    test_loss: float | None
    seconds: float
    stopped_early: bool
    unfreeze: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        return data


def plan_phases(config: TrainConfig) -> list[Phase]:
    """Phase 1 (``head``) unless ``epochs`` is 0, then one ``finetune`` stage per unfreeze step."""
    phases = []
    if config.epochs > 0:
        phases.append(Phase("head", config.epochs, config.lr, UnfreezePolicy("blocks", 0)))
    if config.unfreeze_layers:
        stages = [UnfreezePolicy("layers", config.unfreeze_layers)]
    else:
        stages = [p for p in parse_unfreeze(config.unfreeze) if not p.frozen]
    if config.finetune_epochs > 0:
        for i, policy in enumerate(stages, start=1):
            name = "finetune" if len(stages) == 1 else f"finetune{i}"
            phases.append(Phase(name, config.finetune_epochs, config.finetune_lr, policy))
    if not phases:
        raise UsageError("nothing to train: --epochs and --finetune-epochs (or --unfreeze) are all 0")
    return phases


def train(
    config: TrainConfig,
    run_dir: Path,
    *,
    reporter: Reporter | None = None,
    resume: bool = False,
    start_model: Path | None = None,
) -> TrainResult:
    """Train (or resume) the run in ``run_dir``; ``start_model`` fine-tunes an existing model.

    A run that fails before its first epoch leaves nothing behind when ``run_dir`` was empty (a new
    run); one that fails later is marked ``failed`` in ``state.json`` with the reason, and keeps every
    finished epoch for ``--resume``.
    """
    fresh = not resume and (not run_dir.exists() or not any(run_dir.iterdir()))
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        removed = remove_stale_temporaries(run_dir, runs.RUN_FILES)
        if removed:
            (reporter or NullReporter()).log(f"Removed {len(removed)} half-written file(s) of a killed save")
    try:
        return _train(config, run_dir, reporter=reporter, resume=resume, start_model=start_model)
    except TrainingInterrupted:
        raise
    except BaseException as exc:
        _record_failure(run_dir, fresh, exc)
        raise


def _record_failure(run_dir: Path, fresh: bool, exc: BaseException) -> None:
    state_file = run_dir / runs.STATE
    try:
        state = TrainState.from_dict(runs.read_json(state_file)) if state_file.is_file() else None
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
        runs.write_json(state_file, asdict(state))


def _train(
    config: TrainConfig,
    run_dir: Path,
    *,
    reporter: Reporter | None,
    resume: bool,
    start_model: Path | None,
) -> TrainResult:
    import keras

    from scenecls.training.callbacks import BatchProgress

    reporter = reporter or NullReporter()
    # A fresh Keras state per run: the same seed gives the same initial weights whatever ran before
    # in this process (a sweep runs many), and earlier runs' graphs are freed.
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    spec = get_spec(config.backbone)
    size = config.image_size or spec.default_size
    phases = plan_phases(config)
    data = prepare_data(
        data_source(config.data),
        val_split=config.val_split,
        seed=config.seed,
        reporter=reporter,
    )
    state = TrainState.from_dict(runs.read_json(run_dir / runs.STATE)) if resume else TrainState()
    history = runs.read_history(run_dir / runs.HISTORY) if resume else []
    if resume and state.status == "finished":
        reporter.log(f"{run_dir} has already finished training")
        return _result(run_dir, state, runs.read_json(run_dir / runs.METRICS), [])
    if resume:
        _check_resume_data(run_dir, data, reporter)
    else:
        _write_run_files(run_dir, config, data, size)
        runs.write_json(run_dir / runs.STATE, asdict(state))  # so that --resume works from the start

    model, compiled = _initial_model(config, run_dir, data, size, resume, start_model, reporter)
    backbone = find_backbone(model)
    block_map = spec.block_map(backbone)
    for phase in phases:
        check_policy(block_map, phase.policy)
    augment = build_augmentation(config.augment if config.augment else NO_AUGMENTATION, seed=config.seed)
    train_ds = make_dataset(
        data.train,
        (size, size),
        config.batch_size,
        shuffle=True,
        augment=augment,
        seed=config.seed,
        cache=config.cache_images,
    )
    val_ds = make_dataset(data.val, (size, size), config.batch_size, cache=config.cache_images)
    steps = math.ceil(len(data.train) / config.batch_size)
    weights = class_weights(data.train.labels, len(data.classes)) if config.class_weights else None

    reports: list[UnfreezeReport] = []
    state.status, state.error = "running", None
    started = time.monotonic() - state.seconds
    checkpoints: ModelCheckpoints | None = None
    try:
        for index in range(state.phase, len(phases)):
            phase = phases[index]
            done = state.phase_epoch if index == state.phase else 0
            report = apply_unfreeze(backbone, block_map, phase.policy, model=model)
            reports.append(report)
            resumed_head = index == state.phase and state.head_checkpoint
            if done >= phase.epochs and not resumed_head:
                continue
            if not (compiled and index == state.phase and done > 0):
                _compile(model, phase, config.lr_schedule, steps)
            compiled = False
            reporter.log(
                f"Phase {phase.name}: {phase.epochs} epochs at lr {phase.lr:g}, unfreezing {report.policy}"
                f" ({len(report.blocks)} blocks, {report.layers} layers); "
                f"{report.trainable_params:,} trainable / {report.non_trainable_params:,} frozen parameters"
            )
            phase_start = time.monotonic() - state.phase_seconds.get(phase.name, 0.0)
            fit_epoch = _live_epochs(model, train_ds, val_ds, weights)
            checkpoints = ModelCheckpoints(model, run_dir)
            if phase.policy.frozen and config.feature_cache:
                cached = load_or_compute(
                    model, backbone, data.train, data.val, (size, size), cache_root=cache_dir(),
                    batch_size=config.batch_size, augment=config.augment, aug_copies=config.cache_aug,
                    seed=config.seed, reporter=reporter,
                )  # fmt: skip
                state.feature_cache = "reused" if cached.reused else "built"
                fit_epoch, trainer = _cached_epochs(model, cached, config, weights)
                checkpoints = HeadCheckpoints(model, trainer, run_dir)
            checkpoints.begin(resumed=resumed_head)
            for phase_epoch in range(done, phase.epochs):
                epoch = state.epoch + 1
                total_epochs = state.epoch - phase_epoch + sum(p.epochs for p in phases[index:])
                task = reporter.task(
                    f"Epoch {epoch}/{total_epochs} {phase.name}", total=steps, unit="batches"
                )
                epoch_start = time.monotonic()
                try:
                    logs = fit_epoch(phase_epoch, BatchProgress(task))
                finally:
                    task.close()
                row = {
                    "epoch": epoch,
                    "phase": phase.name,
                    "loss": logs.get("loss"),
                    "accuracy": logs.get("accuracy"),
                    "val_loss": logs.get("val_loss"),
                    "val_accuracy": logs.get("val_accuracy"),
                    "lr": _current_lr(model),
                    "seconds": round(time.monotonic() - epoch_start, 3),
                }
                if not _finite(row["loss"], row["val_loss"], row["val_accuracy"]):
                    # Nothing of this epoch is saved: its weights are no longer numbers.
                    with _interrupts_deferred():
                        history.append(row)
                        runs.write_history(run_dir / runs.HISTORY, history)
                        if checkpoints.pending:  # model files from the last finished epoch's head
                            checkpoints.finish(
                                best_in_phase=state.best_phase == phase.name, continue_from_best=False
                            )
                        state.head_checkpoint = False
                        state.seconds = time.monotonic() - started
                        runs.write_json(run_dir / runs.STATE, asdict(state))
                    raise TrainingDiverged(run_dir, epoch, phase, state.best_epoch)
                with _interrupts_deferred():  # checkpoint files and state.json must agree
                    history.append(row)
                    _after_epoch(model, checkpoints, state, row, config, phase)
                    state.phase, state.phase_epoch, state.epoch = index, phase_epoch + 1, epoch
                    state.head_checkpoint = checkpoints.pending
                    state.seconds = time.monotonic() - started
                    state.phase_seconds[phase.name] = round(time.monotonic() - phase_start, 3)
                    runs.write_history(run_dir / runs.HISTORY, history)
                    runs.write_json(run_dir / runs.STATE, asdict(state))
                reporter.log(
                    f"epoch {epoch} {phase.name}: loss {row['loss']:.4f} acc {row['accuracy']:.4f} "
                    f"val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f} "
                    f"lr {row['lr']:.2g} ({row['seconds']:.1f}s)"
                )
                if config.patience and state.wait >= config.patience:
                    state.stopped_early = True
                    reporter.log(f"No improvement for {config.patience} epochs: stopping {phase.name} early")
                    break
            with _interrupts_deferred():
                checkpoints.finish(
                    best_in_phase=state.best_phase == phase.name, continue_from_best=bool(config.patience)
                )
                state.phase, state.phase_epoch, state.wait = index + 1, 0, 0
                state.head_checkpoint = False
                state.phase_seconds[phase.name] = round(time.monotonic() - phase_start, 3)
                runs.write_json(run_dir / runs.STATE, asdict(state))
            checkpoints.discard()
            checkpoints = None
    except KeyboardInterrupt:
        # Everything up to the last finished epoch is on disk; the epoch in progress is lost.
        if checkpoints is not None and checkpoints.pending:
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: --resume uses the head files
                checkpoints.finish(best_in_phase=state.best_phase == phase.name, continue_from_best=False)
        state.status = "interrupted"
        state.head_checkpoint = checkpoints is not None and checkpoints.pending
        state.seconds = time.monotonic() - started
        runs.write_json(run_dir / runs.STATE, asdict(state))
        if checkpoints is not None and not checkpoints.pending:
            checkpoints.discard()
        raise TrainingInterrupted(run_dir) from None
    metrics = _final_metrics(run_dir, data, size, config, state, reporter)
    metrics["feature_cache"] = state.feature_cache
    metrics["phase_seconds"] = state.phase_seconds
    state.status = "finished"
    state.seconds = time.monotonic() - started
    metrics["seconds"] = round(state.seconds, 1)
    runs.write_json(run_dir / runs.METRICS, metrics)
    runs.write_json(run_dir / runs.STATE, asdict(state))
    report_dicts = [r.to_dict() for r in reports]
    config_data = runs.read_json(run_dir / runs.CONFIG)
    config_data["unfreeze_reports"] = report_dicts
    runs.write_json(run_dir / runs.CONFIG, config_data)
    return _result(run_dir, state, metrics, report_dicts)


# ------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def _interrupts_deferred():
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


def _write_run_files(run_dir: Path, config: TrainConfig, data: PreparedData, size: int) -> None:
    import keras
    import tensorflow as tf

    runs.write_json(
        run_dir / runs.CONFIG,
        {
            **config.to_dict(),
            "image_size": size,
            "data_resolved": str(data.index.root),
            "data_layout": data.index.layout,
            "data_fingerprint": data.index.fingerprint(),
            "classes": data.classes,
            "images": {
                "train": len(data.train),
                "val": len(data.val),
                "test": len(data.test) if data.test else 0,
                "skipped": len(data.skipped),
            },
            "val_source": data.val_source,
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


def _check_resume_data(run_dir: Path, data: PreparedData, reporter: Reporter) -> None:
    saved = runs.read_json(run_dir / runs.CONFIG)
    if saved.get("classes") != data.classes:
        raise SceneclsError(
            f"the data's classes ({', '.join(data.classes)}) differ from the run's "
            f"({', '.join(saved.get('classes', []))}); cannot resume"
        )
    if saved.get("data_fingerprint") != data.index.fingerprint():
        reporter.warn("the data set changed since this run started; resuming on the data as it is now")


def _initial_model(config, run_dir, data, size, resume, start_model, reporter):
    """(model, compiled): the last checkpoint, a model to fine-tune, or a new classifier."""
    last = run_dir / runs.LAST
    if resume and last.is_file():
        reporter.log(f"Resuming from {last}")
        return load_model(last, compile=True), True
    if start_model is not None:
        model = load_model(start_model)
        check_compatible(model, data.classes, runs.model_classes(start_model, None), backbone=config.backbone)
        return model, False
    model = build_classifier(
        config.backbone, len(data.classes), size=size, weights=config.weights, head=config.head
    )
    return model, False


def _fit_one_epoch(trainer, train_ds, val_ds, callback, weights) -> dict[str, float]:
    from scenecls.training.callbacks import StopOnNonFiniteLoss

    with finite_dataset_warnings_silenced():
        fit = trainer.fit(
            train_ds,
            validation_data=val_ds,
            epochs=1,
            verbose=0,
            shuffle=False,
            # A NaN loss stops the epoch at that batch instead of training on garbage to its end.
            callbacks=[callback, StopOnNonFiniteLoss()],
            class_weight=weights,
        )
    return {key: float(values[-1]) for key, values in fit.history.items()}


def _finite(*values: float | None) -> bool:
    return all(value is not None and math.isfinite(value) for value in values)


def _live_epochs(model, train_ds, val_ds, weights):
    """One epoch of the whole model on images: ``fit_epoch(phase_epoch, callback) -> logs``."""
    return lambda phase_epoch, callback: _fit_one_epoch(model, train_ds, val_ds, callback, weights)


def _cached_epochs(model, cached: CachedFeatures, config: TrainConfig, weights):
    """``(fit_epoch, trainer)``: one epoch of the head alone on cached features, using copy
    ``phase_epoch mod copies`` of each image, and the head model it trains.

    The head model shares the classifier's layers and optimizer, so checkpoints of the classifier
    hold exactly what was trained, optimizer state included.
    """
    import tensorflow as tf

    trainer = head_model(model)
    trainer.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"])
    copies = cached.train.shape[0]
    val_ds = tf.data.Dataset.from_tensor_slices((cached.val, cached.val_labels)).batch(config.batch_size)

    def fit_epoch(phase_epoch: int, callback) -> dict[str, float]:
        features = cached.train[phase_epoch % copies]
        train_ds = (
            tf.data.Dataset.from_tensor_slices((features, cached.train_labels))
            .shuffle(len(features), seed=config.seed + phase_epoch)
            .batch(config.batch_size)
        )
        return _fit_one_epoch(trainer, train_ds, val_ds, callback, weights)

    return fit_epoch, trainer


def _compile(model, phase: Phase, schedule: str, steps: int) -> None:
    import keras

    lr: Any = phase.lr
    if schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(phase.lr, decay_steps=max(1, steps * phase.epochs))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def _current_lr(model) -> float:
    import keras

    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def _after_epoch(
    model, checkpoints: ModelCheckpoints, state: TrainState, row: dict, config: TrainConfig, phase: Phase
) -> None:
    """Checkpoints, early-stopping and plateau bookkeeping after one epoch."""
    checkpoints.save_last()
    val_accuracy = row["val_accuracy"]
    if val_accuracy > state.best_val_accuracy:
        state.best_val_accuracy = val_accuracy
        state.best_epoch = row["epoch"]
        state.best_phase = phase.name
        state.wait = 0
        checkpoints.save_best()
    else:
        state.wait += 1
    if config.lr_schedule == "plateau":
        if state.plateau_best is None or row["val_loss"] < state.plateau_best:
            state.plateau_best, state.plateau_wait = row["val_loss"], 0
        else:
            state.plateau_wait += 1
            if state.plateau_wait >= PLATEAU_PATIENCE:
                new_lr = max(_current_lr(model) * PLATEAU_FACTOR, MIN_LR)
                model.optimizer.learning_rate.assign(new_lr)
                state.plateau_wait = 0


def _final_metrics(
    run_dir: Path, data: PreparedData, size: int, config: TrainConfig, state: TrainState, reporter: Reporter
) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "best_val_accuracy": state.best_val_accuracy,
        "best_epoch": state.best_epoch,
        "best_phase": state.best_phase,
        "epochs": state.epoch,
        "stopped_early": state.stopped_early,
        "test_accuracy": None,
        "test_loss": None,
    }
    if data.test:
        reporter.log(f"Testing the best model on {len(data.test)} test images")
        best = load_model(run_dir / runs.BEST)
        best.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        test_ds = make_dataset(data.test, (size, size), config.batch_size)
        with finite_dataset_warnings_silenced():
            loss, accuracy = best.evaluate(test_ds, verbose=0)
        metrics["test_accuracy"], metrics["test_loss"] = float(accuracy), float(loss)
    return metrics


def _result(run_dir: Path, state: TrainState, metrics: dict, reports: list[dict]) -> TrainResult:
    return TrainResult(
        run_dir=run_dir,
        status=state.status,
        epochs=state.epoch,
        best_val_accuracy=state.best_val_accuracy,
        best_epoch=state.best_epoch,
        best_phase=state.best_phase,
        test_accuracy=metrics.get("test_accuracy"),
        test_loss=metrics.get("test_loss"),
        seconds=round(state.seconds, 1),
        stopped_early=state.stopped_early,
        unfreeze=reports,
    )
