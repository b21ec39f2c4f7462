"""Metrics for a classifier on a labelled split: accuracy, top-k, per-class precision / recall / F1,
macro and weighted averages, the confusion matrix, calibration and accuracy against coverage; and the
probabilities they are computed from.

The metric arithmetic is plain NumPy on probabilities and labels, so it is checked without a model. It
sits below training (whose final test uses it) and evaluation (which loads models and runs to use it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from scenecls.calibration import calibration_scores, reliability_bins, risk_coverage
from scenecls.data.layout import Split


@dataclass
class Scores:
    """A model's scores on one split: accuracy, top-k, loss, per class, calibration (a run's evaluation,
    :class:`scenecls.evaluation.RunEvaluation`, holds one with where it came from)."""

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
    # Expected calibration error (15 bins), NLL, Brier and the reliability bins; with the model's
    # temperature, "temperature" and the scores "before" it (see scenecls.calibration).
    calibration: dict[str, Any] = field(default_factory=dict)
    coverage: list[dict[str, Any]] = field(default_factory=list)  # accuracy at each --min-confidence

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_predictions(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], *, top_k: int = 3, split: str = ""
) -> Scores:
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
    return Scores(
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
        calibration={**calibration_scores(probs, labels), "bins": reliability_bins(probs, labels)}
        if n
        else {},
        coverage=risk_coverage(probs, labels) if n else [],
    )


def predict_split(model, split: Split, batch_size: int = 32) -> np.ndarray:
    """Class probabilities for every image of ``split``, in order (through a copy of ``model`` with its
    batch normalisation folded, :func:`~scenecls.models.folding.for_inference`)."""
    from scenecls.classifier import EAGER_BATCHES, inference_function, input_size
    from scenecls.data.pipeline import finite_dataset_warnings_silenced, make_dataset
    from scenecls.models.folding import for_inference

    dataset = make_dataset(split, input_size(model), batch_size, drop_unreadable=False)
    with finite_dataset_warnings_silenced():
        if -(-len(split) // batch_size) > EAGER_BATCHES:
            return np.asarray(for_inference(model, images=len(split)).predict(dataset, verbose=0))
        forward = inference_function(model, batch_size, images=len(split))  # a few batches: no graph
        outputs = [forward(images) for images, _ in dataset]
    return np.concatenate(outputs) if outputs else np.zeros((0, *model.output_shape[1:]), np.float32)


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
