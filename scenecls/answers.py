"""One image's answer: its top classes from the model's probabilities, and "unknown" below a confidence
floor. Shared by every way images are predicted (files, URLs, video frames, HTTP requests)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from scenecls.calibration import UNKNOWN


@dataclass
class Prediction:
    path: str
    label: str | None = None
    confidence: float | None = None
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    unknown: bool | None = None  # below --min-confidence (None: no floor was asked for)
    best_guess: str | None = None  # the top class, also when the answer is unknown

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["top"] = [{"label": label, "confidence": conf} for label, conf in self.top]
        if self.unknown is None:
            del data["unknown"], data["best_guess"]
        return data


def abstain(prediction: Prediction, min_confidence: float) -> Prediction:
    """``prediction`` answered :data:`~scenecls.calibration.UNKNOWN` when its top class's confidence
    is below ``min_confidence``; the top class stays its ``best_guess`` (and first in ``top``)."""
    if not prediction.ok:
        return prediction
    prediction.best_guess = prediction.label
    prediction.unknown = prediction.confidence is None or prediction.confidence < min_confidence
    if prediction.unknown:
        prediction.label = UNKNOWN
    return prediction


def rank(prediction: Prediction, probabilities: np.ndarray, classes: list[str], top_k: int) -> Prediction:
    """``prediction`` given its ``top_k`` classes from one image's ``probabilities`` (or an error when
    they are not numbers)."""
    if not np.all(np.isfinite(probabilities)):
        prediction.error = "the model's output is not a number (a diverged model?)"
        return prediction
    order = np.argsort(-probabilities)[: max(1, min(top_k, len(classes)))]
    prediction.top = [(classes[i], float(probabilities[i])) for i in order]
    prediction.label, prediction.confidence = prediction.top[0]
    return prediction
