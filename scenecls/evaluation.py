"""Metrics for a classifier on a labelled split: accuracy, top-k, per-class precision / recall / F1,
macro and weighted averages, and the confusion matrix.

The metric arithmetic is plain NumPy on probabilities and labels, so it is checked without a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scenecls.data.layout import Split
from scenecls.errors import UsageError
from scenecls.reporting import NullReporter, Reporter


@dataclass
class Evaluation:
    split: str
    images: int
    accuracy: float
    top_k: int
    top_k_accuracy: float
    loss: float
    classes: list[str]
    per_class: list[dict[str, Any]] = field(default_factory=list)
    macro: dict[str, float] = field(default_factory=dict)
    weighted: dict[str, float] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)  # rows: true class, columns: predicted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_predictions(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], *, top_k: int = 3, split: str = ""
) -> Evaluation:
    """Every metric from predicted probabilities ``(n, k)`` and true labels ``(n,)``."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(classes)
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    top_k = max(1, min(top_k, k))
    top = np.argsort(-probs, axis=1)[:, :top_k]
    in_top = (top == labels[:, None]).any(axis=1)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)

    per_class = []
    for c, name in enumerate(classes):
        tp = confusion[c, c]
        predicted_c = confusion[:, c].sum()
        support = confusion[c, :].sum()
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(
            {
                "class": name,
                "precision": float(precision),
                "recall": float(recall),
                "f1": float(f1),
                "support": int(support),
            }
        )
    supports = np.array([row["support"] for row in per_class], dtype=np.float64)
    present = supports > 0

    def average(key: str, weights: np.ndarray | None) -> float:
        values = np.array([row[key] for row in per_class])
        if weights is None:
            return float(values[present].mean()) if present.any() else 0.0
        return float((values * weights).sum() / weights.sum()) if weights.sum() else 0.0

    n = len(labels)
    return Evaluation(
        split=split,
        images=n,
        accuracy=float((predicted == labels).mean()) if n else 0.0,
        top_k=top_k,
        top_k_accuracy=float(in_top.mean()) if n else 0.0,
        loss=float(-np.log(picked).mean()) if n else 0.0,
        classes=list(classes),
        per_class=per_class,
        macro={key: average(key, None) for key in ("precision", "recall", "f1")},
        weighted={key: average(key, supports) for key in ("precision", "recall", "f1")},
        confusion=confusion.tolist(),
    )


def predict_split(model, split: Split, batch_size: int = 32) -> np.ndarray:
    """Class probabilities for every image of ``split``, in order (through a copy of ``model`` with its
    batch normalisation folded, :func:`~scenecls.models.folding.for_inference`)."""
    from scenecls.classifier import input_size
    from scenecls.data.pipeline import finite_dataset_warnings_silenced, make_dataset
    from scenecls.models.folding import for_inference

    dataset = make_dataset(split, input_size(model), batch_size, drop_unreadable=False)
    with finite_dataset_warnings_silenced():
        return np.asarray(for_inference(model, images=len(split)).predict(dataset, verbose=0))


def prediction_rows(split: Split, probs: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """One row per image: path, true and predicted class, confidence and loss (for plots)."""
    rows = []
    for path, label, p in zip(split.paths, split.labels, probs, strict=True):
        predicted = int(np.argmax(p))
        rows.append(
            {
                "path": path,
                "true": classes[label],
                "predicted": classes[predicted],
                "confidence": float(p[predicted]),
                "loss": float(-np.log(max(float(p[label]), 1e-12))),
            }
        )
    return rows


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


@dataclass
class RunEvaluation:
    evaluation: Evaluation
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
    top_k: int = 3,
    batch_size: int = 32,
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
    from scenecls.classifier import check_compatible, load_model
    from scenecls.config import TrainConfig
    from scenecls.data.pipeline import prepare_data
    from scenecls.paths import data_source
    from scenecls.precision import with_precision
    from scenecls.predict import predict_array
    from scenecls.runtimes import FlipAveraged, KerasRuntime, load_runtime, model_kind
    from scenecls.training import runs

    reporter = reporter or NullReporter()
    model_path, run_dir = runs.resolve_model(model_ref, project)
    config = TrainConfig.from_dict(runs.read_json(run_dir / runs.CONFIG)) if run_dir else TrainConfig()
    if data is None and run_dir is None:
        raise UsageError(f"{model_path} is not in a run folder: pass --data")
    source = data_source(data or config.data)
    prepared = prepare_data(source, val_split=config.val_split, seed=config.validation_seed,
                            reporter=reporter)  # fmt: skip
    splits = {"train": prepared.train, "val": prepared.val, "test": prepared.test}
    name = split or ("test" if prepared.test else "val")
    if data is None and run_dir is not None:
        _check_ensemble_split(runs.read_json(run_dir / runs.CONFIG), name)
    chosen = splits.get(name)
    if not chosen and name == "val" and prepared.val_source == "none":
        raise UsageError(
            f"{source} has no test split, and the run trained on all its images (--val-split 0): pass "
            f"--data with images it did not train on"
        )
    if not chosen:
        raise UsageError(f"{source} has no {name} split")
    reporter.log(f"Evaluating {model_path} on {len(chosen)} {name} images of {source}")
    if model_kind(model_path) == "keras":
        model = with_precision(load_model(model_path), precision)
        check_compatible(model, prepared.classes, runs.model_classes(model_path, run_dir))
        runtime = KerasRuntime.of(model, batch_size, jit=jit) if tta or jit else None
    else:  # an exported model, through its own runtime
        runtime = load_runtime(model_path, batch_size=batch_size, trust_model=trust_model)
        check_classes(runtime.num_classes, prepared.classes, runs.model_classes(model_path, run_dir))
    if runtime is None:
        probs = predict_split(model, chosen, batch_size)
    else:
        runtime = FlipAveraged(runtime) if tta else runtime
        probs = predict_array(runtime, chosen.paths, batch_size=batch_size)
    evaluation = evaluate_predictions(
        probs, np.asarray(chosen.labels), prepared.classes, top_k=top_k, split=name
    )
    rows = prediction_rows(chosen, probs, prepared.classes)
    outcome = RunEvaluation(evaluation, model_path, run_dir, rows)
    if run_dir is not None:
        # best.keras writes evaluation.json; an exported model, evaluation.<its name>.json beside it.
        tag = ("" if model_path.name == runs.BEST else f".{model_path.name}") + (".tta" if tta else "")
        saved = [run_dir / f"evaluation{tag}.json", run_dir / f"predictions{tag}.csv"]
        runs.write_json(saved[0], {"data": str(source), "model": str(model_path), **evaluation.to_dict()})
        runs.write_rows_csv(saved[1], rows)
        outcome.saved = saved
    return outcome
