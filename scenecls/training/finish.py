"""The end of a run: its best model calibrated on the validation images (see ``calibrate.py``) and
tested on the held-out ones, ``metrics.json`` and the model card written, the run marked finished (and its
confusion matrix logged to TensorBoard when asked)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from scenecls import runs
from scenecls.classifier import load_model
from scenecls.config import TrainConfig
from scenecls.data.pipeline import (
    PreparedData,
)
from scenecls.metrics import evaluate_predictions, predict_split
from scenecls.model_card import refresh_card
from scenecls.runs import Run, RunState
from scenecls.training.calibrate import calibrate_best, scores_on
from scenecls.training.callbacks import Ledger
from scenecls.training.context import RunContext
from scenecls.training.state import TrainResult, train_result
from scenecls.unfreeze import UnfreezeReport
from scenecls.units import count


def finish_run(
    context: RunContext, ledger: Ledger, reports: list[UnfreezeReport], *, best_model=None, held=None
) -> TrainResult:
    """Calibrate and test the best model and write ``metrics.json``; the run is finished.

    ``best_model``: the trained model when it is ``best.keras`` as saved (the run's last epoch was its
    best): calibrated, tested and exported as it is, instead of loaded again from the file. ``held``: the
    last phase's epoch source, whose cached validation rows the temperature is fitted on when it can
    give them (see :func:`~scenecls.training.calibrate.calibrate_best`).
    """
    run_dir, data, config = context.run_dir, context.data, context.config
    state = ledger.state
    calibration = _calibration(context, state, best_model, held)
    # calibrated now, in memory as saved; else best.keras as trained, in memory or read when first needed
    best = _BestModel(run_dir, calibration.pop("model", None) or best_model)
    metrics = _final_metrics(context, state, calibration, best)
    metrics["feature_cache"] = state.feature_cache
    metrics["activation_cache"] = state.activation_cache
    metrics["phase_seconds"] = state.phase_seconds
    if ledger.first_batch is not None:  # this process's wait for its first batch (a resume's, after one)
        metrics["first_batch_seconds"] = ledger.first_batch
    state.status = "finished"
    metrics["seconds"] = round(time.monotonic() - ledger.started, 1)
    run = Run(run_dir)
    run.write_metrics(metrics)
    ledger.write_state()
    report_dicts = [r.to_dict() for r in reports]
    run.update_config({"unfreeze_reports": report_dicts})
    refresh_card(run_dir, context.reporter)
    if config.tensorboard:
        _log_confusion(run_dir, data, config, state, best.model())
    result = train_result(run_dir, state, metrics, report_dicts)
    result.best_model, result.data = best.loaded, data  # for the step after training (the export)
    return result


class _BestModel:
    """``best.keras`` as the end of the run has it: the calibrated model when it was just fitted, else
    read once, when first needed (the test, the confusion matrix)."""

    def __init__(self, run_dir: Path, model=None) -> None:
        self.run_dir, self.loaded = run_dir, model

    def model(self):
        if self.loaded is None:
            self.loaded = load_model(self.run_dir / runs.BEST)
        return self.loaded


def _log_confusion(run_dir: Path, data: PreparedData, config: TrainConfig, state: RunState, best) -> None:
    from scenecls.training.tensorboard import LOGDIR, log_confusion_matrix

    split, name = data.held_out(test_first=True)
    probs = predict_split(best, split, config.batch_size)
    evaluation = evaluate_predictions(probs, np.asarray(split.labels), data.classes, split=name)
    title = f"best model (epoch {state.best_epoch}) on {name}: accuracy {evaluation.accuracy:.4f}"
    log_confusion_matrix(run_dir / LOGDIR, evaluation.confusion, data.classes, step=state.epoch, title=title)


def _calibration(context: RunContext, state: RunState, best_model=None, held=None) -> dict[str, Any]:
    """The best model's temperature: fitted now, unless the best model is the one an earlier end of
    this run calibrated (an extended run whose extra epochs did not beat it)."""
    earlier = Run(context.run_dir).optional(runs.METRICS).get("calibration")
    if isinstance(earlier, dict) and earlier.get("epoch") == state.best_epoch and "temperature" in earlier:
        return earlier
    held_rows = None if held is None else held.val_probabilities
    return calibrate_best(context, state.best_epoch, model=best_model, val_probabilities=held_rows)


def _final_metrics(
    context: RunContext, state: RunState, calibration: dict[str, Any], best: _BestModel
) -> dict[str, Any]:
    data, reporter = context.data, context.reporter
    metrics: dict[str, Any] = {
        "best_val_accuracy": state.validated_best,
        "best_epoch": state.best_epoch,
        "best_phase": state.best_phase,
        "epochs": state.epoch,
        "stopped_early": state.stopped_early,
        "test_accuracy": None,
        "test_loss": None,
        "temperature": calibration["temperature"],
    }
    if data.test:
        reporter.log(f"Testing the best model on {count(len(data.test), 'test image')}")
        probs = predict_split(best.model(), data.test, context.config.batch_size)
        test = evaluate_predictions(probs, np.asarray(data.test.labels), data.classes, split="test")
        metrics["test_accuracy"], metrics["test_loss"] = test.accuracy, test.loss
        # What the model card says of the test: each class's scores, the confusions, accuracy at each
        # confidence floor (the full evaluation, with every image's row, is `scenecls evaluate`'s).
        metrics["test_detail"] = {
            "images": test.images,
            "per_class": test.per_class,
            "confusion": test.confusion,
            "coverage": test.coverage,
        }
        calibration = {**calibration, "test": scores_on(probs, data.test, calibration["temperature"])}
    metrics["calibration"] = calibration
    return metrics
