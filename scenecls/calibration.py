"""How far a classifier's confidence can be trusted, and one scalar that mends most of it.

A fine-tuned CNN's softmax is over-confident: of the images it calls 95 % sure, fewer than 95 % are
right (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017). *Temperature scaling*
divides the logits by one scalar ``T`` fitted on the validation images to minimise their negative
log-likelihood; the largest logit stays the largest, so the predicted class (and accuracy) never
changes, only how sure the model says it is. ``T`` is kept inside the saved model (its last layer's
weights divided by ``T``, see :func:`scenecls.classifier.scale_logits`), so every export and every
prediction is calibrated without knowing it.

Probabilities are enough to work with: ``log p`` is the logits minus a per-image constant, which a
softmax does not see, so ``softmax(log p / T)`` is ``softmax(logits / T)``.

Plain NumPy on probabilities and labels, like :mod:`scenecls.metrics`.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15  # Guo et al.'s number of equal-width confidence bins
COVERAGE_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)  # confidence floors evaluate reports accuracy at
UNKNOWN = "unknown"  # what predict answers below --min-confidence
LOWEST_TEMPERATURE, HIGHEST_TEMPERATURE = 0.05, 20.0  # the range searched; beyond it the fit is broken
_TINY = np.finfo(np.float32).tiny  # a float32 softmax underflows to 0 only for logit gaps of ~100


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``probs`` as the model would give them with its logits divided by ``temperature``."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _TINY, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    labels = np.asarray(labels, dtype=np.int64)
    picked = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()) if len(labels) else 0.0


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels``.

    The likelihood is convex in ``1 / T`` (a log-sum-exp of a linear function of it), so a golden-section
    search over ``1 / T`` finds the one minimum; 1.0 when there is nothing to fit on.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), _TINY, 1.0))
    rows = np.arange(len(labels))

    def nll(inverse: float) -> float:
        z = logp * inverse
        top = z.max(axis=1)
        return float((top + np.log(np.exp(z - top[:, None]).sum(axis=1)) - z[rows, labels]).mean())

    low, high = 1.0 / HIGHEST_TEMPERATURE, 1.0 / LOWEST_TEMPERATURE
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(80):  # the bracket shrinks to 1e-16 of its width
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return float(1.0 / ((low + high) / 2.0))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per equal-width confidence bin: its range, how many images, their mean confidence and accuracy
    (the reliability diagram; a calibrated model has accuracy = confidence in every bin)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    # Bin i holds confidences in (i/bins, (i+1)/bins]; the lowest also holds exactly 0.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    rows = []
    for i in range(bins):
        chosen = index == i
        count = int(chosen.sum())
        rows.append(
            {
                "low": i / bins,
                "high": (i + 1) / bins,
                "count": count,
                "confidence": float(confidence[chosen].mean()) if count else 0.0,
                "accuracy": float(correct[chosen].mean()) if count else 0.0,
            }
        )
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """The images' share-weighted mean gap between confidence and accuracy over the bins."""
    total = len(labels)
    if not total:
        return 0.0
    return float(
        sum(
            row["count"] / total * abs(row["accuracy"] - row["confidence"])
            for row in reliability_bins(probs, labels, bins)
        )
    )


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """The mean squared distance between the probabilities and the one-hot truth (summed over classes)."""
    probs = np.asarray(probs, dtype=np.float64)
    if not len(probs):
        return 0.0
    truth = np.zeros_like(probs)
    truth[np.arange(len(probs)), np.asarray(labels, dtype=np.int64)] = 1.0
    return float(((probs - truth) ** 2).sum(axis=1).mean())


def calibration_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Expected calibration error (15 bins), negative log-likelihood and Brier score."""
    return {
        "ece": expected_calibration_error(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
    }


def risk_coverage(
    probs: np.ndarray, labels: np.ndarray, thresholds: tuple[float, ...] = COVERAGE_THRESHOLDS
) -> list[dict[str, float]]:
    """For each confidence floor: the share of images answered (coverage) and the accuracy on them;
    below the floor ``predict --min-confidence`` answers ``unknown``."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    rows = []
    for threshold in thresholds:
        kept = confidence >= threshold
        rows.append(
            {
                "min_confidence": float(threshold),
                "coverage": float(kept.mean()) if len(kept) else 0.0,
                "accuracy": float(correct[kept].mean()) if kept.any() else None,
            }
        )
    return rows


# Fewer validation images than this fit no temperature one can trust: it is left at 1.
MIN_CALIBRATION_IMAGES = 100


def held_out_check(probs: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float | bool]:
    """Whether a temperature helps images it was not fitted on: two folds of the validation images,
    each half scored (log loss and ECE) with the temperature fitted on the other half, against T = 1.
    The log loss is what the temperature minimises, so it is the judge (``helps``); the ECE is told."""
    labels = np.asarray(labels, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    scored = {"nll_before": 0.0, "nll_after": 0.0, "ece_before": 0.0, "ece_after": 0.0}
    for fit_on, score_on in (halves, halves[::-1]):
        temperature = fit_temperature(probs[fit_on], labels[fit_on])
        share = len(score_on) / len(labels)
        for when, scaled in (
            ("before", probs[score_on]),
            ("after", with_temperature(probs[score_on], temperature)),
        ):
            scored[f"nll_{when}"] += share * negative_log_likelihood(scaled, labels[score_on])
            scored[f"ece_{when}"] += share * expected_calibration_error(scaled, labels[score_on])
    return {
        **{k: round(v, 6) for k, v in scored.items()},
        "helps": scored["nll_after"] < scored["nll_before"],
    }


def judge_temperature(probs: np.ndarray, labels: np.ndarray, fitted: float) -> tuple[dict | None, str]:
    """The held-back check of a fitted temperature, and why it is not applied ("" when it is): too few
    validation images to fit one, a fit at the edge of the range searched, or a temperature that made
    the log loss of validation images it was not fitted on worse."""
    if len(labels) < MIN_CALIBRATION_IMAGES:
        return None, (
            f"only {len(labels)} validation images: too few to fit one reliably "
            f"(at least {MIN_CALIBRATION_IMAGES})"
        )
    if not LOWEST_TEMPERATURE * 1.01 < fitted < HIGHEST_TEMPERATURE * 0.99:
        return None, (
            f"the fitted {fitted:.3g} is at the edge of what is searched "
            f"({LOWEST_TEMPERATURE:g}-{HIGHEST_TEMPERATURE:g}): the validation images are too odd to trust it"
        )
    check = held_out_check(probs, labels)
    if not check["helps"]:
        return check, (
            f"as one fitted on half the validation images made the other half's log loss worse "
            f"({check['nll_before']:.4f} -> {check['nll_after']:.4f})"
        )
    return check, ""
