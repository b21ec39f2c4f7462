"""The phase loop: phase 1 trains the head on a frozen backbone, then each fine-tuning stage
unfreezes more of it with a lower learning rate; one ``fit`` per phase.

The loop, in short::

    context = start_run(config, ...)                   # context.py: seed, precision, data, size
    state, history = open the run folder (or resume it)
    learner = prepare_model(context, start_model)      # last.keras, a model to fine-tune, or a new one
    for each phase of context.phases not finished yet:
        learner.unfreeze(phase.policy)                 # unfreeze.py: what trains
        compile (unless resuming mid-phase with the optimizer's state)
        source = FeatureSource, CutPointSource or ImageSource   # sources.py: what one epoch feeds fit()
        source.trainer.fit(..., callbacks=phase_callbacks(...))  # callbacks.py: per-epoch concerns
        finish the phase's checkpoints, record it in state.json
    test the best model, write metrics.json            # finish.py

Where each concern lives: the run's context and its starting model in ``context.py``; the phases,
rates and compiling in ``recipe.py``; the run's life in its folder (open, resume, interrupt, fail,
extend) in ``state.py``; what one epoch feeds ``fit`` and choosing it in ``sources.py``; the final
test and ``metrics.json`` in ``finish.py``; the run folder's files in ``scenecls/runs.py``;
checkpoints in ``checkpoints.py``
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
from scenecls.calibration import UNKNOWN
from scenecls.config import TrainConfig
from scenecls.data.pipeline import class_weights, finite_dataset_warnings_silenced
from scenecls.errors import SceneclsError, UsageError, first_line
from scenecls.files import atomic_path, remove_stale_temporaries
from scenecls.precision import dtype_policy
from scenecls.progress import NullReporter, Reporter
from scenecls.tracking import NO_TRACKING, Tracker
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
    TrackEpoch,
    interrupts_deferred,
)
from scenecls.training.context import Learner, RunContext, prepare_model, start_run
from scenecls.training.distill import attach_teacher
from scenecls.training.distill import check_resume as check_teacher_unchanged
from scenecls.training.finish import finish_run
from scenecls.training.recipe import compile_phase, learning_rate, plan_phases
from scenecls.training.sources import EpochSource, ImageSource, epoch_source, image_source
from scenecls.training.state import (
    Extension,
    TrainingInterrupted,
    TrainResult,
    check_resume_data,
    open_run,
    record_failure,
    record_interrupt,
    train_result,
)
from scenecls.training.strategy import OFF, Distribution, cluster_stopped, private_run_dir
from scenecls.unfreeze import UnfreezeReport
from scenecls.units import count

__all__ = ["TrainResult", "TrainingInterrupted", "train"]


def train(
    config: TrainConfig,
    run_dir: Path,
    *,
    reporter: Reporter | None = None,
    resume: bool = False,
    start_model: Path | None = None,
    distribution: Distribution | None = None,
    tracker: Tracker | None = None,
    extension: Extension | None = None,
) -> TrainResult:
    """Train (or resume) the run in ``run_dir``; ``start_model`` fine-tunes an existing model;
    ``extension`` gives a finished run more epochs (written once its data is checked).

    A resumed run that fails before its epochs start (its data gone or changed, a damaged checkpoint)
    is left exactly as it was: its ``config.json`` and ``state.json`` are put back.

    A run that fails before its first epoch leaves nothing behind when ``run_dir`` was empty (a new
    run); one that fails later is marked ``failed`` in ``state.json`` with the reason, and keeps every
    finished epoch for ``--resume``. Under a ``distribution`` only the chief writes ``run_dir``; the
    other workers train alongside in a scratch copy (see :mod:`scenecls.training.strategy`).

    ``tracker`` logs the run elsewhere too (MLflow, see :mod:`scenecls.tracking`): it is
    closed here as FINISHED, FAILED with the reason, or KILLED; the chief alone tracks.
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
    tracker = tracker or NO_TRACKING
    before = _record_files(run_dir) if resume else {}
    started: list[bool] = []  # set when the epochs begin: a failure before leaves the run as it was
    try:
        result = _train(config, run_dir, reporter, resume=resume, start_model=start_model,
                        distribution=distribution, tracker=tracker, extension=extension,
                        started=started)  # fmt: skip
    except TrainingInterrupted:
        tracker.end(run_dir, "interrupted")
        raise
    except BaseException as exc:
        if resume and not started:
            _put_back(run_dir, before)
            raise
        lost = cluster_stopped(exc, distribution)
        tracker.end(run_dir, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                    None if isinstance(exc, KeyboardInterrupt) else first_line(lost or exc, 300))  # fmt: skip
        if lost is None:
            record_failure(run_dir, fresh, exc)
            raise
        lost = SceneclsError(
            f"{lost}; every finished epoch is saved: start the cluster again with "
            f"scenecls train --resume {run_dir}"
        )
        record_failure(run_dir, fresh, lost)
        raise lost from exc
    tracker.end(run_dir, result.status)
    return result


def _record_files(run_dir: Path) -> dict[str, bytes]:
    """A resumed run's record as it stands, to put back should the run fail before its epochs start."""
    return {
        name: (run_dir / name).read_bytes()
        for name in (runs.CONFIG, runs.STATE)
        if (run_dir / name).is_file()
    }


def _put_back(run_dir: Path, before: dict[str, bytes]) -> None:
    for name, content in before.items():
        path = run_dir / name
        if not path.is_file() or path.read_bytes() != content:
            with atomic_path(path) as tmp:
                tmp.write_bytes(content)


def _train(
    config: TrainConfig, run_dir: Path, reporter: Reporter, *, resume: bool, start_model: Path | None,
    distribution: Distribution, tracker: Tracker = NO_TRACKING, extension: Extension | None = None,
    started: list[bool] | None = None,
) -> TrainResult:  # fmt: skip
    plan_phases(config)  # a recipe that cannot be planned stops before the data set is read
    if config.warmup_epochs and config.lr_schedule == "plateau":
        raise UsageError("--warmup-epochs works with --lr-schedule constant or cosine, not plateau")
    if config.tensorboard:
        from scenecls.training.tensorboard import require_tensorboard

        require_tensorboard()
    context = start_run(
        config, reporter=reporter, distribution=distribution, run_dir=run_dir, tracker=tracker
    )
    context = attach_teacher(context)
    if resume:
        check_teacher_unchanged(run_dir, context.distillation)
    _check_validation(context)
    _warn_reserved_names(context)
    if extension is not None:
        check_resume_data(run_dir, context.data)
        extension.write()
    ledger = open_run(context, resume)
    phases = context.phases
    if ledger.state.phase > len(phases):
        raise SceneclsError(
            f"{run_dir / runs.STATE} is damaged: phase is {ledger.state.phase}, but the run has "
            f"{len(phases)} phases"
        )
    if ledger.state.status == "finished":
        reporter.log(f"{run_dir} has already finished training")
        return train_result(run_dir, ledger.state, runs.Run(run_dir).metrics, [])
    tracked = tracker.start(run_dir, runs.Run(run_dir).recorded, ledger.state.mlflow_run_id)
    if tracked and tracked != ledger.state.mlflow_run_id:
        ledger.state.mlflow_run_id = tracked
        ledger.write_state()
    if distribution.strategy is not None:
        reporter.log(distribution.describe(config.batch_size))
        global_batch = distribution.global_batch(context.config.batch_size)
        context = replace(context, config=replace(context.config, batch_size=global_batch))
    reports: list[UnfreezeReport] = []
    epochs_before = ledger.state.epoch
    # Every variable (model, optimizer, metrics) is the strategy's; every layer computes in the precision.
    with distribution.scope(), dtype_policy(context.config.mixed_precision):
        learner = prepare_model(context, start_model, resume=resume)
        images = image_source(learner)
        if started is not None:
            started.append(True)
        ledger.state.status, ledger.state.error = "running", None
        try:
            for index in range(ledger.state.phase, len(phases)):
                reports.append(learner.unfreeze(phases[index].policy))
                _run_phase(learner, ledger, index, reports[-1], images)
                learner.compiled = False
        except KeyboardInterrupt:
            record_interrupt(ledger)
            raise TrainingInterrupted(run_dir) from None
    if not distribution.chief:  # the chief tests, exports and reports the run
        ledger.state.status = "finished"
        return train_result(run_dir, ledger.state, {}, [r.to_dict() for r in reports])
    best_model = _best_in_memory(learner, ledger, epochs_before)
    # on one process: a model spread over several devices predicts through the strategy, on images
    held = learner.last_source if distribution.strategy is None else None
    return finish_run(learner.context, ledger, reports, best_model=best_model, held=held)


def _best_in_memory(learner: Learner, ledger: Ledger, epochs_before: int):
    """The trained model when it is ``best.keras`` as saved: this process trained the run's last epoch and
    it was the best (the model's weights and optimizer state are what ``last.keras`` and its copy
    ``best.keras`` hold). Else None: the file is read (a best epoch further back, a run resumed with no
    epoch left to train, whose ``best.keras`` an earlier end may have calibrated, or a model spread over
    several devices)."""
    state = ledger.state
    trained = state.epoch > epochs_before
    if not trained or state.best_epoch != state.epoch or learner.context.distribution.strategy is not None:
        return None
    return learner.model


def _warn_reserved_names(context: RunContext) -> None:
    """A class named like predict's abstention reads as "not sure" to anyone who skips the
    ``unknown`` column: said once, at training, when the name can still be changed."""
    clashing = [name for name in context.data.classes if name.lower() == UNKNOWN]
    if clashing:
        context.reporter.warn(
            f"a class is named {clashing[0]!r}, which is also what `predict --min-confidence` answers "
            f"when it is not sure; its `unknown` column (true or false) tells the two apart, or rename "
            f"the folder"
        )


def _check_validation(context: RunContext) -> None:
    """Refuse what chooses by validation when there are no validation images (``--val-split 0``)."""
    config, data, reporter = context.config, context.data, context.reporter
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
    learner: Learner, ledger: Ledger, index: int, report: UnfreezeReport, images: ImageSource
) -> None:
    """One phase: compile, choose its epoch source, one ``fit`` over its epochs, then close it."""
    context, model = learner.context, learner.model
    config, data, reporter, phases = context.config, context.data, context.reporter, context.phases
    distribution = context.distribution
    phase, state = phases[index], ledger.state
    done = state.phase_epoch if index == state.phase else 0
    resumed_head = index == state.phase and state.head_checkpoint
    if done >= phase.epochs and not resumed_head:
        return
    if not (learner.compiled and index == state.phase and done > 0):  # else: go on with the optimizer's state
        compile_phase(model, phase, config, images.steps)
    elif not isinstance(schedule := learning_rate(phase, config, images.steps), int | float):
        # The saved schedule was planned for the phase's length then: a phase extended since (see
        # extend_run) goes on along the longer phase's curve, from the step it has reached.
        model.optimizer.learning_rate = schedule
    reporter.log(
        f"Phase {phase.name}: {count(phase.epochs, 'epoch')} at lr {phase.lr:g}, unfreezing {report.policy}"
        f" ({len(report.blocks)} blocks, {report.layers} layers); "
        f"{report.trainable_params:,} trainable / {report.non_trainable_params:,} frozen parameters"
    )
    ledger.phase = info = PhaseInfo(index, phase.name, phase.lr, first_epoch=state.epoch - done)
    ledger.phase_started = time.monotonic() - state.phase_seconds.get(phase.name, 0.0)
    source, cache = epoch_source(learner, phase.policy, images)
    learner.last_source = source
    if cache and phase.policy.frozen:
        state.feature_cache = cache
    elif cache:
        state.activation_cache[phase.name] = cache
    ledger.checkpoints = checkpoints = source.checkpoints(ledger.run_dir)
    checkpoints.begin(resumed=resumed_head)
    if config.ema and index == state.phase and (done > 0 or resumed_head):
        ema.swap(source.trainer.optimizer)  # a checkpoint holds the average in the model (see ema.py)
    total_epochs = state.epoch - done + sum(p.epochs for p in phases[index:])
    callbacks = phase_callbacks(source, ledger, info, context, total_epochs)
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
    source: EpochSource, ledger: Ledger, info: PhaseInfo, context: RunContext, total_epochs: int
) -> list:
    """The phase's callbacks, in the order they must see each epoch's end (progress last)."""
    config, reporter = context.config, context.reporter
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
    if context.tracker is not NO_TRACKING:
        callbacks.append(TrackEpoch(ledger, context.tracker))
    callbacks.append(BatchProgress(reporter, ledger, info, source.steps, total_epochs))
    return callbacks
