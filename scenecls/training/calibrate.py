"""Temperature scaling of a run's best model: fitted on its validation images, kept in ``best.keras``.

Done at the end of every run (before the final test) and by ``scenecls calibrate RUN`` for runs made
before it existed. The arithmetic is :mod:`scenecls.calibration`; the temperature goes into the model's
last layer (:func:`scenecls.classifier.scale_logits`), so ``predict`` and every export give calibrated
probabilities. ``metrics.json`` records it: ``temperature`` and ``calibration`` (the scores before
and after, on the validation split and, when there is one, the test split).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scenecls import runs
from scenecls.calibration import (
    ECE_BINS,
    calibration_scores,
    fit_temperature,
    judge_temperature,
    with_temperature,
)
from scenecls.classifier import PREDICTIONS, load_model, rewrite_weights, save_model, scale_logits
from scenecls.data.layout import Split
from scenecls.data.pipeline import same_data
from scenecls.errors import DataError, SceneclsError, UsageError
from scenecls.metrics import predict_split
from scenecls.precision import dtype_policy
from scenecls.progress import NullReporter, Reporter
from scenecls.training.context import RunContext


def calibrate_best(
    context: RunContext,
    best_epoch: int,
    inside: float = 1.0,
    *,
    model=None,
    val_probabilities: Callable[[Any], np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """Fit the temperature of the run's ``best.keras`` on the validation split and put it in the model
    (the calibrated model, as saved, is in the record's ``"model"``, not written to JSON).

    ``inside``: the temperature the model holds already (a run calibrated before): the fit is made on
    the probabilities without it, and the model's logits are scaled by what is missing. With no
    validation images (``--val-split 0``) there is nothing to fit on: the model stays as trained.
    ``model``: ``best.keras`` as it is in memory already (the end of a run whose last epoch was its best),
    which saves loading it. ``val_probabilities``: the model's probabilities on the validation images
    from the rows the last phase trained against (their cached activations or features, which the run's
    own validation read every epoch; None when it cannot give them), instead of a pass over the images:
    the same probabilities to float16 rounding of the activations, in a quarter of the time.
    """
    data, reporter, path = context.data, context.reporter, context.run_dir / runs.BEST
    if not data.validated:
        reporter.log(
            "No validation images (--val-split 0): no temperature to fit the confidence on; "
            "the probabilities stay as trained (temperature 1)"
        )
        return {"temperature": inside, "epoch": best_epoch, "fitted_on": None}
    in_memory = model is not None
    if not in_memory:
        with dtype_policy(context.config.mixed_precision):  # as the run loads its checkpoints
            model = load_model(path)  # to predict with; the file keeps its optimizer's state (below)
    labels = np.asarray(data.val.labels)
    probabilities = None if val_probabilities is None else val_probabilities(model)
    read_from = "cache"
    if probabilities is None or len(probabilities) != len(labels):
        probabilities, read_from = predict_split(model, data.val, context.config.batch_size), "images"
    raw = with_temperature(probabilities, 1.0 / inside)
    fitted = fit_temperature(raw, labels)
    check, not_applied = judge_temperature(raw, labels, fitted)
    temperature = 1.0 if not_applied else fitted
    if temperature != inside:
        trained = model.get_layer(PREDICTIONS).get_weights()
        scale_logits(model, temperature / inside)
        # The file as trained with its last layer scaled; else saved whole, with its optimizer's state.
        if not rewrite_weights(path, trained, model.get_layer(PREDICTIONS).get_weights()):
            if in_memory:
                save_model(model, path)
            else:
                _save_scaled(path, temperature / inside, context.config.mixed_precision)
    before = calibration_scores(raw, labels)
    after = calibration_scores(with_temperature(raw, temperature), labels)
    if not_applied:
        reporter.log(f"Calibration: temperature left at 1, {not_applied}")
    else:
        reporter.log(
            f"Calibrated on {len(labels)} validation images: temperature {temperature:.3f}, expected "
            f"calibration error {before['ece']:.4f} -> {after['ece']:.4f}"
        )
    return {
        "temperature": temperature,
        "fitted": fitted,
        "applied": not not_applied,
        "not_applied": not_applied or None,
        "held_out": check,
        "epoch": best_epoch,
        "fitted_on": "val",
        "read_from": read_from,  # the validation images, or the rows the run's last phase cached of them
        "images": len(labels),
        "bins": ECE_BINS,
        "val": {"before": before, "after": after},
        "model": model,
    }


def _save_scaled(path: Path, factor: float, mixed_precision: str) -> None:
    """``path`` saved again with its logits scaled by ``factor``, loaded with its optimizer's state so
    that the file keeps it (when the logits could not be rewritten in place)."""
    with dtype_policy(mixed_precision):
        model = load_model(path, compile=True)
    scale_logits(model, factor)
    save_model(model, path)


def scores_on(probs: np.ndarray, split: Split, temperature: float) -> dict[str, dict[str, float]]:
    """Scores of a calibrated model's ``probs`` on ``split``, and of the model before calibration."""
    labels = np.asarray(split.labels)
    return {
        "before": calibration_scores(with_temperature(probs, 1.0 / temperature), labels),
        "after": calibration_scores(probs, labels),
    }


def calibrate_run(run_dir: Path, *, reporter: Reporter | None = None) -> dict[str, Any]:
    """``scenecls calibrate``: fit (or fit again) a finished run's temperature and record it in
    ``metrics.json``; its ``best.tflite`` record is dropped, since the model it was made from changed
    (the command that calls this makes it again)."""
    from scenecls.training.context import start_run

    reporter = reporter or NullReporter()
    run = runs.Run(run_dir)
    config_data = run.recorded
    if config_data.get("ensemble"):
        raise UsageError("an ensemble averages calibrated members: calibrate each member's run instead")
    metrics_file = run_dir / runs.METRICS
    if not run.has(runs.METRICS):
        if run.status == "finished":
            raise SceneclsError(
                f"{metrics_file} is missing although {run_dir} finished training: its record is damaged "
                f"(the temperature and test scores live there); train the run again"
            )
        raise UsageError(f"{run_dir} has not finished training: calibrate it once it has")
    metrics = run.metrics
    context = start_run(run.config, reporter=reporter, run_dir=run_dir)
    if not same_data(context.data, config_data):  # fit on the run's own validation images, or not at all
        raise DataError(
            f"the images at {context.data.index.root.absolute()} are not the ones {run_dir} trained on "
            f"(another data set, or images added, removed or rewritten since): its temperature is fitted "
            f"only on its own validation images, so it is left as it is"
        )
    recorded = config_data.get("classes")
    if recorded is not None and list(recorded) != list(context.classes):
        raise SceneclsError(
            f"the data's classes ({', '.join(context.classes)}) differ from the run's ({', '.join(recorded)})"
        )
    if not context.data.validated:
        raise UsageError(
            f"{run_dir} trained on all its images (--val-split 0): there are no validation images to fit "
            f"a temperature on"
        )
    inside = _number(metrics.get("temperature"), 1.0)
    record = calibrate_best(context, int(metrics.get("best_epoch") or 0), inside)
    calibrated = record.pop("model", None)  # as saved: no need to read it back
    if context.data.test:
        best = calibrated or load_model(run_dir / runs.BEST)
        probs = predict_split(best, context.data.test, context.config.batch_size)
        record["test"] = scores_on(probs, context.data.test, record["temperature"])
    metrics["temperature"], metrics["calibration"] = record["temperature"], record
    metrics.pop("export", None)
    run.write_metrics(metrics)
    return record


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and value > 0 else default
