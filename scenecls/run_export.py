"""``best.tflite`` beside a run's ``best.keras``, checked, so that ``scenecls predict`` answers in a fraction
of a second without TensorFlow: the step the commands that train ask for once a run has finished."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scenecls.checksums import checksum_path
from scenecls.errors import first_line
from scenecls.export import Parity, check_parity, export_model
from scenecls.model_card import refresh_card
from scenecls.runs import MODEL_CARD
from scenecls.runtimes import metadata_path
from scenecls.samples import split_images


def export_for_predict(run_dir: Path, model, classes: list[str], images: np.ndarray, labels) -> Parity:
    """``best.tflite`` beside a run's ``best.keras``, checked, so that ``scenecls predict`` answers without
    TensorFlow; a file that fails its check is removed (predict then uses ``best.keras``)."""
    target = run_dir / "best.tflite"
    export_model(model, classes, "tflite", target, source=run_dir / "best.keras")
    parity = check_parity(model, target, images, labels, fmt="tflite", quantize=None)
    if not parity.ok:
        target.unlink(missing_ok=True)
        metadata_path(target).unlink(missing_ok=True)
        checksum_path(target).unlink(missing_ok=True)
    return parity


def write_fast_predict(
    run_dir: Path, classes: list[str], split, size: int, reporter, model=None
) -> dict[str, Any] | None:
    """:func:`export_for_predict` for a run that has just saved ``best.keras`` (``model``, or that file
    loaded), checked on up to 200 images of ``split``, as the run's metrics record it. A failure costs
    the run nothing but that speed (``predict`` then uses ``best.keras``): a warning, and None."""
    from scenecls.classifier import load_model

    reporter.log("Writing best.tflite for a fast predict (--no-export skips it)")
    try:
        model = model if model is not None else load_model(run_dir / "best.keras")
        images, labels = split_images(split, (size, size), 200)
        parity = export_for_predict(run_dir, model, classes, images, labels)
    except Exception as exc:  # any converter failure: the run itself is done and saved
        reporter.warn(f"could not write best.tflite ({first_line(exc, 200)}); predict will use best.keras")
        return None
    if not parity.ok:
        reporter.warn(
            f"best.tflite agreed with best.keras on only {parity.top1_agreement:.1%} of {parity.images} "
            f"images; removed, predict will use best.keras"
        )
        return None
    return {"tflite": "best.tflite", "top1_agreement": parity.top1_agreement, "images": parity.images}


def export_after_training(
    run_dir: Path, reporter, *, model=None, data=None, tracker=None
) -> dict[str, Any] | None:
    """The step a command takes after a run has finished training: ``best.tflite`` beside ``best.keras``
    (unless the run was made with ``--no-export``), checked on the run's held-out images, and recorded in
    ``metrics.json`` under ``export``. Training itself knows nothing of exports; the commands that train
    (``train``, ``finetune``, ``sweep``) ask for this step. A run whose record is already as fresh as its
    ``best.keras`` (a finished run resumed again) is left as it is. ``model`` and ``data``: what the end
    of the run holds in memory (its calibrated best model, its prepared data), so that neither is read
    again. ``tracker``: the run's tracker (MLflow), which gets the export and the metrics that record it."""
    from scenecls.progress import NullReporter
    from scenecls.runs import Run

    run = Run(run_dir)
    metrics = run.metrics
    if not run.config.export_tflite or "export" in metrics:
        refresh_card(run_dir, reporter)  # calibrate's new temperature, a record from before cards
        return metrics.get("export")
    prepared = data if data is not None else run.prepared_data(reporter=NullReporter())[0]
    size = run.image_size
    metrics["export"] = write_fast_predict(
        run_dir, prepared.classes, prepared.held_out()[0], size, reporter, model=model
    )
    run.write_metrics(metrics)
    refresh_card(run_dir, reporter)  # now naming best.tflite too
    if tracker is not None and tracker.run_id:
        tracker.log_files(
            tracker.run_id,
            [run_dir / name for name in ("metrics.json", "best.tflite", "labels.txt", MODEL_CARD)],
        )
    return metrics["export"]
