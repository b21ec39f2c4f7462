"""The training recipe: phase 1 trains the head on a frozen backbone, then each fine-tuning stage
unfreezes more of it with a lower learning rate.

The loop, in short::

    phases = plan_phases(config)                       # head, then one stage per --unfreeze step
    state, history = open the run folder (or resume it)
    model = last.keras, a model to fine-tune, or a new classifier
    for each phase not finished yet:
        apply_unfreeze(...)                            # unfreeze.py: what trains
        compile (unless resuming mid-phase with the optimizer's state)
        source = FeatureSource or ImageSource          # sources.py: what one epoch feeds fit()
        source.trainer.fit(..., callbacks=phase_callbacks(...))  # callbacks.py: per-epoch concerns
        finish the phase's checkpoints, record it in state.json
    test the best model, write metrics.json

Where each concern lives: the run folder's files in ``runs.py``; checkpoints in ``checkpoints.py``
(whole model, or only the head while phase 1 trains on cached features); the feature cache in
``features.py``; NaN, history, early stopping, plateau, checkpoint writing and progress as callbacks in
``callbacks.py``; TensorBoard in ``tensorboard.py``; the weights' moving average (``--ema``) in ``ema.py``;
tf.distribute (who trains, who writes) in ``strategy.py``; 16-bit compute in ``scenecls.precision``;
MixUp/CutMix in ``scenecls.data.mixing``. After every epoch the run folder is up to date, so a
crash or Ctrl-C loses at most the epoch in progress and ``--resume`` continues in the right phase and epoch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from scenecls import __version__, runs
from scenecls.classifier import build_classifier, check_compatible, find_backbone, load_model
from scenecls.config import TrainConfig
from scenecls.data.augment import NO_AUGMENTATION, augmented_copies, build_augmentation
from scenecls.data.pipeline import (
    PreparedData,
    class_weights,
    finite_dataset_warnings_silenced,
    make_dataset,
    prepare_data,
)
from scenecls.errors import SceneclsError, UsageError, first_line
from scenecls.files import remove_stale_temporaries
from scenecls.models.registry import get_spec
from scenecls.paths import cache_dir, data_source
from scenecls.precision import dtype_policy, dtype_policy_name, jit_compile, resolve_precision
from scenecls.reporting import NullReporter, Reporter
from scenecls.training import ema
from scenecls.training.callbacks import (
    BatchProgress,
    EarlyStopping,
    HistoryRow,
    Ledger,
    PhaseInfo,
    ReduceLROnPlateau,
    RunCheckpoint,
    StopOnNonFiniteLoss,
    TrainingDiverged,
    interrupts_deferred,
)
from scenecls.training.sources import CutPointSource, EpochSource, FeatureSource, ImageSource
from scenecls.training.strategy import OFF, Distribution, cluster_stopped, private_run_dir
from scenecls.unfreeze import UnfreezePolicy, UnfreezeReport, apply_unfreeze, check_policy, parse_unfreeze

__all__ = ["Phase", "TrainResult", "TrainState", "TrainingDiverged", "TrainingInterrupted", "extend_run",
           "plan_phases", "train"]  # fmt: skip


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
    status: str = "running"  # running, interrupted, failed, finished
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
    activation_cache: dict[str, str] = field(default_factory=dict)  # per fine-tuning phase: built, reused
    error: str | None = None  # why the run failed (status "failed")

    @property
    def validated_best(self) -> float | None:
        """The best validation accuracy; None when no epoch was validated (``--val-split 0``)."""
        return self.best_val_accuracy if self.best_val_accuracy >= 0 else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        return data


def plan_phases(config: TrainConfig) -> list[Phase]:
    """Phase 1 (``head``) unless ``epochs`` is 0, then one ``finetune`` stage per unfreeze step.

    ``last_phase_epochs`` (set when a finished run is extended) overrides the last phase's length.
    """
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
    if config.last_phase_epochs:
        phases[-1] = replace(phases[-1], epochs=config.last_phase_epochs)
    return phases


def train(
    config: TrainConfig,
    run_dir: Path,
    *,
    reporter: Reporter | None = None,
    resume: bool = False,
    start_model: Path | None = None,
    distribution: Distribution | None = None,
) -> TrainResult:
    """Train (or resume) the run in ``run_dir``; ``start_model`` fine-tunes an existing model.

    A run that fails before its first epoch leaves nothing behind when ``run_dir`` was empty (a new
    run); one that fails later is marked ``failed`` in ``state.json`` with the reason, and keeps every
    finished epoch for ``--resume``. Under a ``distribution`` only the chief writes ``run_dir``; the
    other workers train alongside in a scratch copy (see :mod:`scenecls.training.strategy`).
    """
    reporter = reporter or NullReporter()
    distribution = distribution or OFF
    if not distribution.chief:
        with private_run_dir(run_dir, distribution, resume=resume) as scratch:
            try:
                return _train(config, scratch, reporter, resume=resume, start_model=start_model,
                              distribution=distribution)  # fmt: skip
            except Exception as exc:
                lost = cluster_stopped(exc, distribution)
                if lost is None:
                    raise
                raise lost from exc
    fresh = not resume and (not run_dir.exists() or not any(run_dir.iterdir()))
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume and remove_stale_temporaries(run_dir, runs.RUN_FILES):
        reporter.log("Removed the half-written files of a save that was killed")
    try:
        return _train(config, run_dir, reporter, resume=resume, start_model=start_model,
                      distribution=distribution)  # fmt: skip
    except TrainingInterrupted:
        raise
    except BaseException as exc:
        lost = cluster_stopped(exc, distribution)
        if lost is None:
            _record_failure(run_dir, fresh, exc)
            raise
        lost = SceneclsError(
            f"{lost}; every finished epoch is saved: start the cluster again with "
            f"scenecls train --resume {run_dir}"
        )
        _record_failure(run_dir, fresh, lost)
        raise lost from exc


def _train(
    config: TrainConfig, run_dir: Path, reporter: Reporter, *, resume: bool, start_model: Path | None,
    distribution: Distribution,
) -> TrainResult:  # fmt: skip
    import keras

    # A fresh Keras state per run: the same seed gives the same initial weights whatever ran before
    # in this process (a sweep runs many), and earlier runs' graphs are freed.
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    config = replace(config, mixed_precision=resolve_precision(config.mixed_precision))
    spec = get_spec(config.backbone)
    size = config.image_size or spec.default_size
    phases = plan_phases(config)
    if config.warmup_epochs and config.lr_schedule == "plateau":
        raise UsageError("--warmup-epochs works with --lr-schedule constant or cosine, not plateau")
    if config.tensorboard:
        from scenecls.training.tensorboard import require_tensorboard

        require_tensorboard()
    data = prepare_data(
        data_source(config.data), val_split=config.val_split, seed=config.validation_seed, reporter=reporter
    )
    _check_validation(config, data, reporter)
    ledger = _open_run(run_dir, config, data, size, resume, reporter, distribution)
    if ledger.state.phase > len(phases):
        raise SceneclsError(
            f"{run_dir / runs.STATE} is damaged: phase is {ledger.state.phase}, but the run has "
            f"{len(phases)} phases"
        )
    if ledger.state.status == "finished":
        reporter.log(f"{run_dir} has already finished training")
        return _result(run_dir, ledger.state, runs.read_json(run_dir / runs.METRICS), [])
    if distribution.strategy is not None:
        reporter.log(distribution.describe(config.batch_size))
        config = replace(config, batch_size=distribution.global_batch(config.batch_size))
    reports: list[UnfreezeReport] = []
    # Every variable (model, optimizer, metrics) is the strategy's; every layer computes in the precision.
    with distribution.scope(), dtype_policy(config.mixed_precision):
        model, compiled = _initial_model(config, run_dir, data, size, resume, start_model, reporter)
        backbone = find_backbone(model)
        block_map = spec.block_map(backbone)
        for phase in phases:
            check_policy(block_map, phase.policy)
        images = image_source(config, data, size, model)
        ledger.state.status, ledger.state.error = "running", None
        try:
            for index in range(ledger.state.phase, len(phases)):
                reports.append(apply_unfreeze(backbone, block_map, phases[index].policy, model=model))
                _run_phase(index, phases, model, backbone, reports[-1], images, ledger, config, data, size,
                           compiled=compiled, reporter=reporter, distribution=distribution)  # fmt: skip
                compiled = False
        except KeyboardInterrupt:
            _record_interrupt(ledger)
            raise TrainingInterrupted(run_dir) from None
    if not distribution.chief:  # the chief tests, exports and reports the run
        ledger.state.status = "finished"
        return _result(run_dir, ledger.state, {}, [r.to_dict() for r in reports])
    return _finish(run_dir, data, size, config, ledger, reports, reporter)


def _check_validation(config: TrainConfig, data: PreparedData, reporter: Reporter) -> None:
    """Refuse what chooses by validation when there are no validation images (``--val-split 0``)."""
    if data.validated:
        return
    watching = {"--patience": config.patience, "--lr-schedule plateau": config.lr_schedule == "plateau"}
    chosen = [option for option, on in watching.items() if on]
    if chosen:
        raise UsageError(
            f"{chosen[0]} watches the validation images, and --val-split 0 trains without them; "
            f"use a --val-split above 0 or a val/ folder, or drop {chosen[0]}"
        )
    reporter.log(
        f"No validation images (--val-split 0): training on all {len(data.train)} training images; "
        f"the last epoch is the model"
    )


def _run_phase(
    index: int,
    phases: list[Phase],
    model,
    backbone,
    report: UnfreezeReport,
    images: ImageSource,
    ledger: Ledger,
    config: TrainConfig,
    data: PreparedData,
    size: int,
    *,
    compiled: bool,
    reporter: Reporter,
    distribution: Distribution = OFF,
) -> None:
    """One phase: compile, choose its epoch source, one ``fit`` over its epochs, then close it."""
    phase, state = phases[index], ledger.state
    done = state.phase_epoch if index == state.phase else 0
    resumed_head = index == state.phase and state.head_checkpoint
    if done >= phase.epochs and not resumed_head:
        return
    if not (compiled and index == state.phase and done > 0):  # else: go on with the optimizer's state
        _compile(model, phase, config, images.steps)
    elif not isinstance(schedule := learning_rate(phase, config, images.steps), int | float):
        # The saved schedule was planned for the phase's length then: a phase extended since (see
        # extend_run) goes on along the longer phase's curve, from the step it has reached.
        model.optimizer.learning_rate = schedule
    reporter.log(
        f"Phase {phase.name}: {phase.epochs} epochs at lr {phase.lr:g}, unfreezing {report.policy}"
        f" ({len(report.blocks)} blocks, {report.layers} layers); "
        f"{report.trainable_params:,} trainable / {report.non_trainable_params:,} frozen parameters"
    )
    ledger.phase = info = PhaseInfo(index, phase.name, phase.lr, first_epoch=state.epoch - done)
    ledger.phase_started = time.monotonic() - state.phase_seconds.get(phase.name, 0.0)
    source, cache = epoch_source(
        phase.policy, model, backbone, images, config, data, size, reporter, distribution, ledger.run_dir
    )
    if cache and phase.policy.frozen:
        state.feature_cache = cache
    elif cache:
        state.activation_cache[phase.name] = cache
    ledger.checkpoints = checkpoints = source.checkpoints(ledger.run_dir)
    checkpoints.begin(resumed=resumed_head)
    if config.ema and index == state.phase and (done > 0 or resumed_head):
        ema.swap(source.trainer.optimizer)  # a checkpoint holds the average in the model (see ema.py)
    total_epochs = state.epoch - done + sum(p.epochs for p in phases[index:])
    callbacks = phase_callbacks(source, ledger, info, config, reporter, total_epochs)
    stopped_before = state.stopped_early
    weights = class_weights(data.train.labels, len(data.classes)) if config.class_weights else None
    distribution.prepare(source.trainer)
    try:
        with finite_dataset_warnings_silenced():
            source.trainer.fit(
                distribution.shard(source.train_data),
                validation_data=None if source.val_data is None else distribution.shard(source.val_data),
                initial_epoch=done,
                epochs=phase.epochs,
                verbose=0,
                shuffle=False,
                callbacks=callbacks,
                class_weight=weights,
            )
    finally:
        callbacks[-1].close()  # the progress bar of an epoch cut short
    if config.ema:
        ema.adopt_average(source.trainer.optimizer)  # go on as the files do: with the average
    if state.stopped_early and not stopped_before:
        reporter.log(f"No improvement for {config.patience} epochs: stopped {phase.name} early")
    with interrupts_deferred():
        checkpoints.finish(
            best_in_phase=state.best_phase == phase.name, continue_from_best=bool(config.patience)
        )
        state.phase, state.phase_epoch, state.wait, state.head_checkpoint = index + 1, 0, 0, False
        state.phase_seconds[phase.name] = round(time.monotonic() - ledger.phase_started, 3)
        ledger.write_state()
    checkpoints.discard()
    ledger.checkpoints = None


def phase_callbacks(
    source: EpochSource,
    ledger: Ledger,
    info: PhaseInfo,
    config: TrainConfig,
    reporter: Reporter,
    total_epochs: int,
) -> list:
    """The phase's callbacks, in the order they must see each epoch's end (progress last)."""
    optimizer = source.trainer.optimizer
    callbacks = [*source.callbacks(), StopOnNonFiniteLoss(), HistoryRow(ledger, info, optimizer)]
    if config.patience:
        callbacks.append(EarlyStopping(ledger, config.patience))
    if config.lr_schedule == "plateau":
        callbacks.append(ReduceLROnPlateau(ledger, optimizer))
    if config.ema:
        callbacks[:0] = [ema.ValidateAverage(optimizer)]
        callbacks.append(ema.AverageIntoModel(optimizer))
    callbacks.append(RunCheckpoint(ledger, info, ledger.checkpoints))
    if config.ema:
        callbacks.append(ema.AverageOutOfModel(optimizer))
    if config.tensorboard:
        from scenecls.training.tensorboard import LOGDIR, TensorBoardLog

        callbacks.append(TensorBoardLog(ledger, info, ledger.run_dir / LOGDIR))
    callbacks.append(BatchProgress(reporter, ledger, info, source.steps, total_epochs))
    return callbacks


def image_source(config: TrainConfig, data: PreparedData, size: int, model) -> ImageSource:
    """The whole classifier on images: the source of every phase that does not run on cached features."""
    augment = build_augmentation(config.augment if config.augment else NO_AUGMENTATION, seed=config.seed)
    train_ds = make_dataset(
        data.train, (size, size), config.batch_size, shuffle=True, augment=augment, seed=config.seed,
        cache=config.cache_images,
    )  # fmt: skip
    val_ds = None  # no validation images (--val-split 0)
    if data.validated:
        val_ds = make_dataset(data.val, (size, size), config.batch_size, cache=config.cache_images)
    if config.mixing.on:
        from scenecls.data.mixing import mix_batches, one_hot_labels

        train_ds = mix_batches(train_ds, len(data.classes), config.mixing, seed=config.seed)
        if val_ds is not None:
            val_ds = one_hot_labels(val_ds, len(data.classes))
    return ImageSource(model, train_ds, val_ds, steps=math.ceil(len(data.train) / config.batch_size))


def epoch_source(
    policy: UnfreezePolicy, model, backbone, images: ImageSource, config: TrainConfig, data: PreparedData,
    size: int, reporter: Reporter, distribution: Distribution = OFF, run_dir: Path | None = None,
) -> tuple[EpochSource, str | None]:  # fmt: skip
    """``(source, cache)``: what the phase trains on, and whether its cache entry was ``built`` or
    ``reused`` (None: no cache).

    Unless ``--no-cache``: cached pooled features while the backbone is frozen; cached activations at the
    first unfrozen block while the last blocks are fine-tuned (not with ``--finetune-copies 0``, for
    ``--unfreeze all`` or raw layer counts, or with MixUp/CutMix, which mix images). Else the images
    through the whole classifier, freshly augmented every epoch.

    On a cluster the chief builds the cache entry while the others wait; they then read it (on a
    shared filesystem) or, not finding it, compute it for themselves without publishing it.
    """
    if not config.feature_cache:
        return images, None
    if policy.frozen:
        return _feature_source(model, backbone, config, data, size, reporter, distribution)
    from scenecls.training import activations

    index = activations.cut_index(get_spec(config.backbone).block_map(backbone), policy)
    if index is None or config.mixing.on or not config.finetune_copies:
        return images, None
    cut = activations.split_classifier(model, backbone, index)
    augmentations = augmented_copies(config.augment, config.finetune_copies, config.seed + 1)

    def cached(root: Path, build: bool):
        try:
            return activations.load_or_build(
                cut, backbone, data.train, data.val, (size, size), cache_root=root,
                batch_size=config.batch_size, augment=config.augment, copies=config.finetune_copies,
                seed=config.seed, reporter=reporter, build=build, augmentations=augmentations,
            )  # fmt: skip
        except activations.CacheUnavailable as exc:
            reporter.warn(f"{exc}; fine-tuning on images instead")
            return None

    if distribution.chief:
        entry = cached(cache_dir(), build=True)
        distribution.barrier()
    else:
        distribution.barrier()
        entry = cached(cache_dir(), build=False) or cached(run_dir or cache_dir(), build=True)
    if entry is None:
        return images, None
    source = CutPointSource(
        model, cut, entry, batch_size=config.batch_size, seed=config.seed, map_aug=config.finetune_map_aug
    )
    return source, "reused" if entry.reused else "built"


def _feature_source(model, backbone, config, data, size, reporter, distribution) -> tuple[EpochSource, str]:
    from scenecls.training.features import load_or_compute

    augmentations = augmented_copies(config.augment, config.cache_aug, config.seed + 1)

    def features(publish: bool):
        return load_or_compute(
            model, backbone, data.train, data.val, (size, size), cache_root=cache_dir(),
            batch_size=config.batch_size, augment=config.augment, aug_copies=config.cache_aug,
            seed=config.seed, reporter=reporter, publish=publish, augmentations=augmentations,
        )  # fmt: skip

    if distribution.chief:
        cached = features(publish=True)
        distribution.barrier()
    else:
        distribution.barrier()
        cached = features(publish=False)
    source = FeatureSource(
        model, cached, batch_size=config.batch_size, seed=config.seed, mixing=config.mixing
    )
    return source, "reused" if cached.reused else "built"


def _open_run(
    run_dir: Path, config: TrainConfig, data: PreparedData, size: int, resume: bool, reporter: Reporter,
    distribution: Distribution,
) -> Ledger:  # fmt: skip
    """The run's state and history: read back to resume, or a new run folder's files written."""
    if resume:
        state = TrainState.from_dict(runs.read_state(run_dir))
        if state.status != "finished":
            distribution.check_resume(runs.read_json(run_dir / runs.CONFIG).get("distribution"), run_dir)
        # A row past the state's last epoch is one whose checkpoint never finished: it is trained again.
        history = [row for row in runs.read_history(run_dir / runs.HISTORY) if row["epoch"] <= state.epoch]
        ledger = Ledger(state, history, run_dir, time.monotonic() - state.seconds)
        ledger.saved = copy.deepcopy(state)
        if state.status != "finished":
            _check_resume_data(run_dir, data, reporter)
        return ledger
    _write_run_files(run_dir, config, data, size, distribution)
    ledger = Ledger(TrainState(), [], run_dir, time.monotonic())
    ledger.write_state()  # so that --resume works from the start
    return ledger


def _record_interrupt(ledger: Ledger) -> None:
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


def _record_failure(run_dir: Path, fresh: bool, exc: BaseException) -> None:
    state_file = run_dir / runs.STATE
    try:
        state = TrainState.from_dict(runs.read_state(run_dir)) if state_file.is_file() else None
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


def _finish(
    run_dir: Path, data: PreparedData, size: int, config: TrainConfig, ledger: Ledger,
    reports: list[UnfreezeReport], reporter: Reporter,
) -> TrainResult:  # fmt: skip
    """Test the best model and write ``metrics.json``; the run is finished."""
    state = ledger.state
    metrics = _final_metrics(run_dir, data, size, config, state, reporter)
    metrics["feature_cache"] = state.feature_cache
    metrics["activation_cache"] = state.activation_cache
    metrics["phase_seconds"] = state.phase_seconds
    state.status = "finished"
    metrics["seconds"] = round(time.monotonic() - ledger.started, 1)
    runs.write_json(run_dir / runs.METRICS, metrics)
    ledger.write_state()
    report_dicts = [r.to_dict() for r in reports]
    config_data = runs.read_json(run_dir / runs.CONFIG)
    config_data["unfreeze_reports"] = report_dicts
    runs.write_json(run_dir / runs.CONFIG, config_data)
    if config.tensorboard:
        _log_confusion(run_dir, data, config, state)
    return _result(run_dir, state, metrics, report_dicts)


def _log_confusion(run_dir: Path, data: PreparedData, config: TrainConfig, state: TrainState) -> None:
    import numpy as np

    from scenecls.metrics import evaluate_predictions, predict_split
    from scenecls.training.tensorboard import LOGDIR, log_confusion_matrix

    split, name = data.held_out(test_first=True)
    best = load_model(run_dir / runs.BEST)
    probs = predict_split(best, split, config.batch_size)
    evaluation = evaluate_predictions(probs, np.asarray(split.labels), data.classes, split=name)
    title = f"best model (epoch {state.best_epoch}) on {name}: accuracy {evaluation.accuracy:.4f}"
    log_confusion_matrix(run_dir / LOGDIR, evaluation.confusion, data.classes, step=state.epoch, title=title)


def extend_run(
    run_dir: Path, *, epochs: int | None = None, finetune_epochs: int | None = None
) -> TrainConfig:
    """Give a finished run's last phase more epochs (its new total), for ``train --resume RUN``.

    History and checkpoints continue; the optimizer goes on with its state, and a scheduled rate
    (cosine, warm-up) along the curve of the longer phase: a cosine phase of 10 epochs extended to 20
    goes on at half its rate and decays to 0 again. A different recipe (another unfreeze, other rates)
    is a ``finetune`` child run instead.
    """
    config = TrainConfig.from_dict(runs.read_json(run_dir / runs.CONFIG))
    state = TrainState.from_dict(runs.read_state(run_dir))
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
    data = runs.read_json(run_dir / runs.CONFIG)
    runs.write_json(run_dir / runs.CONFIG, {**data, **config.to_dict()})
    state.phase, state.phase_epoch = len(phases) - 1, last.epochs
    state.status, state.stopped_early, state.wait = "interrupted", False, 0
    runs.write_json(run_dir / runs.STATE, asdict(state))
    return config


# ------------------------------------------------------------------------------------------ helpers


def _write_run_files(
    run_dir: Path, config: TrainConfig, data: PreparedData, size: int, distribution: Distribution
) -> None:
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
        saved = next(layer for layer in find_backbone(model).layers if layer.weights).dtype_policy.name
        if saved != dtype_policy_name(config.mixed_precision):
            reporter.warn(
                f"{start_model} computes in {saved}; --mixed-precision {config.mixed_precision} applies "
                f"to new models only, so this run computes as the model was saved"
            )
        return model, False
    model = build_classifier(
        config.backbone, len(data.classes), size=size, weights=config.weights, head=config.head
    )
    return model, False


def learning_rate(phase: Phase, config: TrainConfig, steps: int) -> Any:
    """The phase's rate: constant (a float), or a schedule over the phase's steps — cosine decay to 0,
    either after a linear warm-up from 0 over ``warmup_epochs`` (so that a freshly unfrozen backbone is
    not hit at full rate)."""
    import keras

    total = max(1, steps * phase.epochs)
    warmup = min(steps * config.warmup_epochs, total - 1)
    if config.lr_schedule != "cosine" and not warmup:
        return phase.lr
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else phase.lr,
        decay_steps=max(1, total - warmup),
        alpha=0.0 if config.lr_schedule == "cosine" else 1.0,  # alpha 1: constant after warm-up
        warmup_target=phase.lr if warmup else None,
        warmup_steps=warmup,
    )


def _compile(model, phase: Phase, config: TrainConfig, steps: int) -> None:
    """Adam at the phase's :func:`learning_rate`, with the run's loss, metrics and moving average."""
    import keras

    from scenecls.losses import classification_loss

    lr = learning_rate(phase, config, steps)
    averaging = {"use_ema": True, "ema_momentum": config.ema} if config.ema else {}
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr, **averaging),
        loss=classification_loss(config.label_smoothing, soft_labels=config.mixing.on),
        jit_compile=jit_compile(config.jit),
        metrics=["accuracy"],
    )


def _final_metrics(
    run_dir: Path, data: PreparedData, size: int, config: TrainConfig, state: TrainState, reporter: Reporter
) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "best_val_accuracy": state.validated_best,
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
        best_val_accuracy=state.validated_best,
        best_epoch=state.best_epoch,
        best_phase=state.best_phase,
        test_accuracy=metrics.get("test_accuracy"),
        test_loss=metrics.get("test_loss"),
        seconds=round(state.seconds, 1),
        stopped_early=state.stopped_early,
        unfreeze=reports,
    )
