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

Where each concern lives: the phases, rates and compiling in ``recipe.py``; the run's life in its folder
(open, resume, interrupt, fail, extend) in ``state.py``; what one epoch feeds ``fit`` and choosing it in
``sources.py``; the final test and ``metrics.json`` in ``finish.py``; the run folder's files in
``scenecls/runs.py``; checkpoints in ``checkpoints.py``
(whole model, or only the head while phase 1 trains on cached features); the feature cache in
``features.py``; NaN, history, early stopping, plateau, checkpoint writing and progress as callbacks in
``callbacks.py``; TensorBoard in ``tensorboard.py``; the weights' moving average (``--ema``) in ``ema.py``;
tf.distribute (who trains, who writes) in ``strategy.py``; 16-bit compute in ``scenecls.precision``;
MixUp/CutMix in ``scenecls.data.mixing``. After every epoch the run folder is up to date, so a
crash or Ctrl-C loses at most the epoch in progress and ``--resume`` continues in the right phase and epoch.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from scenecls import runs
from scenecls.classifier import build_classifier, check_compatible, find_backbone, load_model
from scenecls.config import TrainConfig
from scenecls.data.pipeline import (
    PreparedData,
    class_weights,
    finite_dataset_warnings_silenced,
    prepare_data,
)
from scenecls.errors import SceneclsError, UsageError
from scenecls.files import remove_stale_temporaries
from scenecls.models.registry import get_spec
from scenecls.paths import data_source
from scenecls.precision import dtype_policy, dtype_policy_name, resolve_precision
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
from scenecls.training.finish import finish_run
from scenecls.training.recipe import Phase, compile_phase, learning_rate, plan_phases
from scenecls.training.sources import EpochSource, ImageSource, epoch_source, image_source
from scenecls.training.state import (
    TrainingInterrupted,
    TrainResult,
    TrainState,
    extend_run,
    open_run,
    record_failure,
    record_interrupt,
    train_result,
)
from scenecls.training.strategy import OFF, Distribution, cluster_stopped, private_run_dir
from scenecls.unfreeze import UnfreezeReport, apply_unfreeze, check_policy

__all__ = ["Phase", "TrainResult", "TrainState", "TrainingDiverged", "TrainingInterrupted", "extend_run",
           "plan_phases", "train"]  # fmt: skip


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
            record_failure(run_dir, fresh, exc)
            raise
        lost = SceneclsError(
            f"{lost}; every finished epoch is saved: start the cluster again with "
            f"scenecls train --resume {run_dir}"
        )
        record_failure(run_dir, fresh, lost)
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
    ledger = open_run(run_dir, config, data, size, resume, reporter, distribution)
    if ledger.state.phase > len(phases):
        raise SceneclsError(
            f"{run_dir / runs.STATE} is damaged: phase is {ledger.state.phase}, but the run has "
            f"{len(phases)} phases"
        )
    if ledger.state.status == "finished":
        reporter.log(f"{run_dir} has already finished training")
        return train_result(run_dir, ledger.state, runs.read_json(run_dir / runs.METRICS), [])
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
            record_interrupt(ledger)
            raise TrainingInterrupted(run_dir) from None
    if not distribution.chief:  # the chief tests, exports and reports the run
        ledger.state.status = "finished"
        return train_result(run_dir, ledger.state, {}, [r.to_dict() for r in reports])
    return finish_run(run_dir, data, size, config, ledger, reports, reporter)


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
        compile_phase(model, phase, config, images.steps)
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


# ------------------------------------------------------------------------------------------ helpers


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
