"""Evaluating a trained model or run on a labelled split, and saving what it found into the run folder.

The metrics themselves (:mod:`scenecls.metrics`) are plain NumPy on probabilities and labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scenecls.calibration import calibration_scores, reliability_bins, with_temperature
from scenecls.command_options import EVALUATE
from scenecls.errors import UsageError
from scenecls.metrics import Scores, evaluate_predictions, predict_split, prediction_rows
from scenecls.progress import NullReporter, Reporter
from scenecls.units import count


def _check_ensemble_split(config: dict[str, Any], name: str) -> None:
    """Refuse an ensemble's own validation split when its members split the data differently (other
    seeds): images one member was validated on trained another, so the figure would flatter it."""
    ensemble = config.get("ensemble")
    if ensemble and name == "val" and len(set(ensemble.get("seeds", []))) > 1:
        raise UsageError(
            f"the ensemble's members split off different validation images (seeds "
            f"{', '.join(map(str, ensemble['seeds']))}), each trained on the others'; evaluate it on test "
            f"images, or --data with images none of them trained on"
        )


def check_classes(count: int, classes: list[str], model_classes: list[str] | None) -> None:
    """Refuse an exported model for data it was not made for (as ``check_compatible`` does for Keras)."""
    from scenecls.errors import ModelError

    if model_classes is not None and list(model_classes) != list(classes):
        raise ModelError(
            f"the model's classes ({', '.join(model_classes)}) differ from the data's ({', '.join(classes)})"
        )
    if count != len(classes):
        raise ModelError(f"the model predicts {count} classes but the data has {len(classes)}")


def _add_before_calibration(
    evaluation: Scores, probs: np.ndarray, labels: np.ndarray, temperature: float | None
) -> None:
    """With the model's temperature known, the calibration scores of the model without it as well."""
    if temperature is None or not evaluation.calibration:
        return
    raw = with_temperature(probs, 1.0 / temperature)
    before = {**calibration_scores(raw, labels), "bins": reliability_bins(raw, labels)}
    evaluation.calibration.update(temperature=temperature, before=before)


def _temperature(model_path: Path, run_dir: Path | None, tta: bool) -> float | None:
    """The temperature inside a run's best model (and its exports), from ``metrics.json``; None for
    a model file of unknown making, or with ``--tta`` (averaged mirrors are not the fitted model)."""
    from scenecls import runs

    if run_dir is None or tta:
        return None
    value = runs.Run(run_dir).optional(runs.METRICS).get("temperature")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _safe_name(path: Path) -> str:
    """A data set's folder name as it may stand in a file name."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).absolute().name)[:40] or "data"


@dataclass
class RunEvaluation:
    evaluation: Scores
    model_path: Path
    run_dir: Path | None
    rows: list[dict[str, Any]]
    saved: list[Path] = field(default_factory=list)


def evaluate_run(
    model_ref: str | None,
    project: Path,
    *,
    data: Path | None = None,
    split: str | None = None,
    top_k: int = EVALUATE.top_k,
    batch_size: int = EVALUATE.batch_size,
    tta: bool = False,
    precision: str = "off",
    jit: bool = False,
    trust_model: bool = False,
    reporter: Reporter | None = None,
) -> RunEvaluation:
    """Evaluate a run's best model (or a model file) and save the results into its run folder.

    Without ``data`` the run's own data set is used: its test split when it has one, else the
    validation split, rebuilt exactly from the run's seed. ``precision``, ``jit`` and ``trust_model`` as for
    :func:`scenecls.runtimes.load_runtime`.
    """
    from scenecls import runs
    from scenecls.config import TrainConfig
    from scenecls.data.pipeline import prepare_data
    from scenecls.paths import data_source

    reporter = reporter or NullReporter()
    model_path, run_dir = runs.resolve_model(model_ref, project)
    if data is None and run_dir is None:
        raise UsageError(f"{model_path} is not in a run folder: pass --data")
    if run_dir is not None:
        run = runs.Run(run_dir)
        config = run.config
        prepared, own = run.prepared_data(data=data, reporter=reporter)
    else:
        config, own = TrainConfig(), False
        prepared = prepare_data(data_source(data), val_split=config.val_split, seed=config.validation_seed,
                                reporter=reporter)  # fmt: skip
    source = prepared.index.root
    splits = {"train": prepared.train, "val": prepared.val, "test": prepared.test}
    name = split or ("test" if prepared.test else "val")
    if data is None and run_dir is not None:
        _check_ensemble_split(runs.Run(run_dir).recorded, name)
    chosen = splits.get(name)
    if not chosen and name == "val" and prepared.val_source == "none":
        raise UsageError(
            f"{source} has no test split, and the run trained on all its images (--val-split 0): pass "
            f"--data with images it did not train on"
        )
    if not chosen:
        raise UsageError(f"{source} has no {name} split")
    reporter.log(f"Evaluating {model_path} on {count(len(chosen), name + ' image')} of {source}")
    classes = runs.model_classes(model_path, run_dir)
    probs = _probabilities(
        model_path, chosen, prepared.classes, classes, batch_size=batch_size, tta=tta, precision=precision,
        jit=jit, trust_model=trust_model,
    )  # fmt: skip
    evaluation = evaluate_predictions(
        probs, np.asarray(chosen.labels), prepared.classes, top_k=top_k, split=name
    )
    _add_before_calibration(
        evaluation, probs, np.asarray(chosen.labels), _temperature(model_path, run_dir, tta)
    )
    rows = prediction_rows(chosen, probs, prepared.classes)
    outcome = RunEvaluation(evaluation, model_path, run_dir, rows)
    if run_dir is not None:
        outcome.saved = _save(outcome, prepared, own=own, tta=tta)
        if outcome.saved[0].name == runs.EVALUATION and runs.Run(run_dir).status == "finished":
            from scenecls.model_card import refresh_card

            refresh_card(run_dir, reporter)  # its per-class figures are now evaluate's
    return outcome


def _probabilities(
    model_path: Path, split, classes: list[str], recorded: list[str] | None, *, batch_size: int, tta: bool,
    precision: str, jit: bool, trust_model: bool,
) -> np.ndarray:  # fmt: skip
    """The model's probabilities for ``split``: a Keras model as it predicts (or through a runtime for
    ``tta`` and ``jit``), an exported model through its own runtime; classes checked first."""
    from scenecls.classifier import check_compatible, load_model
    from scenecls.precision import with_precision
    from scenecls.predict import predict_array
    from scenecls.runtimes import FlipAveraged, KerasRuntime, load_runtime, model_kind

    if model_kind(model_path) == "keras":
        model = with_precision(load_model(model_path), precision)
        check_compatible(model, classes, recorded)
        if not (tta or jit):
            return predict_split(model, split, batch_size)
        runtime = KerasRuntime.of(model, batch_size, jit=jit)
    else:  # an exported model, through its own runtime
        runtime = load_runtime(model_path, batch_size=batch_size, trust_model=trust_model)
        check_classes(runtime.num_classes, classes, recorded)
    runtime = FlipAveraged(runtime) if tta else runtime
    return predict_array(runtime, split.paths, batch_size=batch_size)


def _save(outcome: RunEvaluation, prepared, *, own: bool, tta: bool) -> list[Path]:
    """best.keras writes evaluation.json; an exported model, evaluation.<its name>.json beside it; on
    other images than the run's own, evaluation.on-<folder>-<identity>.json (the run's are kept)."""
    from scenecls import runs

    model_path, run_dir = outcome.model_path, outcome.run_dir
    tag = ("" if model_path.name == runs.BEST else f".{model_path.name}") + (".tta" if tta else "")
    if not own:
        tag += f".on-{_safe_name(prepared.index.root)}-{prepared.index.identity()[:8]}"
    saved = [run_dir / f"evaluation{tag}.json", run_dir / f"predictions{tag}.csv"]
    data = {"data": str(prepared.index.root), "model": str(model_path), **outcome.evaluation.to_dict()}
    runs.write_json(saved[0], data)
    runs.write_rows_csv(saved[1], outcome.rows)
    return saved
