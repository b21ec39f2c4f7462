"""The end of a run: its best model tested on the held-out images, ``metrics.json`` written, the
run marked finished (and its confusion matrix logged to TensorBoard when asked)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from scenecls import runs
from scenecls.classifier import load_model
from scenecls.config import TrainConfig
from scenecls.data.pipeline import (
    PreparedData,
    finite_dataset_warnings_silenced,
    make_dataset,
)
from scenecls.reporting import Reporter
from scenecls.training.callbacks import Ledger
from scenecls.training.context import RunContext
from scenecls.training.state import TrainResult, TrainState, train_result
from scenecls.unfreeze import UnfreezeReport


def finish_run(context: RunContext, ledger: Ledger, reports: list[UnfreezeReport]) -> TrainResult:
    """Test the best model and write ``metrics.json``; the run is finished."""
    run_dir, data, size, config = context.run_dir, context.data, context.size, context.config
    state = ledger.state
    metrics = _final_metrics(run_dir, data, size, config, state, context.reporter)
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
    return train_result(run_dir, state, metrics, report_dicts)


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
