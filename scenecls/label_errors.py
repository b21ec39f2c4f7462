"""Likely label errors: images whose given label a model trained without them does not believe.

Every labelled image gets out-of-fold class probabilities: the images are split into K stratified folds
and a linear softmax head, trained on the backbone's features of the other K-1 folds, predicts the
fold's images (seconds per fold on cached features; NumPy only). An image is a likely error when, as in
confident learning (Northcutt et al., 2021), another class's probability reaches that class's own
threshold (the mean probability the head gives that class on images labelled with it) and beats the
given label's; candidates are ranked by how little probability the given label gets. The rule and the
threshold are written here, in the open, instead of depending on ``cleanlab`` (AGPL-3.0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scenecls.progress import NullReporter, Reporter

STEPS = 100  # Adam steps per fold, whatever the data set's size (a linear head converges in fewer)
BATCH = 2048
WEIGHT_DECAY = 0.05  # chosen on intel-dev: the lowest out-of-fold log loss of 1e-3..0.1


@dataclass(frozen=True)
class Suspect:
    """An image whose label the out-of-fold head doubts."""

    index: int  # into the images given
    given: int
    suggested: int
    given_probability: float
    suggested_probability: float


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold, 0..folds-1, every class dealt round the folds in a seeded order."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        assignment[members] = (np.arange(len(members)) + rng.integers(folds)) % folds
    return assignment


def fit_softmax(
    x: np.ndarray, labels: np.ndarray, rows: np.ndarray, classes: int, *, seed: int = 0, steps: int = STEPS
):
    """A linear softmax classifier on standardised ``x[rows]`` by mini-batch Adam with weight decay:
    ``(mean, scale, weights, bias)``. ``x`` may be memory-mapped: it is read a batch at a time, so the
    rows are never copied whole."""
    rng = np.random.default_rng(seed)
    mean, scale = _moments(x, rows)
    dims = x.shape[1]
    weights = np.zeros((dims, classes), np.float32)
    bias = np.zeros(classes, np.float32)
    state = [np.zeros_like(weights), np.zeros_like(weights), np.zeros_like(bias), np.zeros_like(bias)]
    onehot = np.eye(classes, dtype=np.float32)
    step, rate = 0, 1e-2
    while step < steps:
        for batch in np.array_split(rng.permutation(rows), max(1, -(-len(rows) // BATCH)))[: steps - step]:
            batch = np.sort(batch)
            inputs = (np.asarray(x[batch], np.float32) - mean) / scale
            probs = _softmax(inputs @ weights + bias)
            error = (probs - onehot[labels[batch]]) / len(batch)
            grads = (inputs.T @ error + WEIGHT_DECAY * weights, error.sum(axis=0))
            step += 1
            for k, (param, grad) in enumerate(zip((weights, bias), grads, strict=True)):
                m, v = state[2 * k], state[2 * k + 1]
                m[...] = 0.9 * m + 0.1 * grad
                v[...] = 0.999 * v + 0.001 * grad * grad
                param -= rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return mean, scale, weights, bias


def predict_softmax(model, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Probabilities of ``x[rows]``, a batch at a time."""
    mean, scale, weights, bias = model
    out = [
        _softmax(((np.asarray(x[rows[i : i + BATCH]], np.float32) - mean) / scale) @ weights + bias)
        for i in range(0, len(rows), BATCH)
    ]
    return np.concatenate(out) if out else np.zeros((0, weights.shape[1]), np.float32)


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    classes: int,
    *,
    folds: int,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> np.ndarray:
    """``(n, classes)`` probabilities, each image's from a head that never saw it."""
    reporter = reporter or NullReporter()
    labels = np.asarray(labels)
    assignment = fold_of(labels, folds, seed)
    probs = np.zeros((len(labels), classes), np.float32)
    task = reporter.task("Cross-validating labels", total=folds, unit="folds")
    try:
        for fold in range(folds):
            held = np.flatnonzero(assignment == fold)
            kept = np.flatnonzero(assignment != fold)
            if len(held) and len(kept):
                model = fit_softmax(features, labels, kept, classes, seed=seed + fold)
                probs[held] = predict_softmax(model, features, held)
            task.advance()
    finally:
        task.close()
    return probs


def find_suspects(probs: np.ndarray, labels: np.ndarray) -> list[Suspect]:
    """The likely label errors, most doubtful first (see the module's doc for the rule)."""
    labels = np.asarray(labels)
    classes = probs.shape[1]
    thresholds = np.array(
        [probs[labels == c, c].mean() if (labels == c).any() else 1.0 for c in range(classes)], np.float32
    )
    confident = np.where(probs >= thresholds, probs, -1.0)
    confident_class = confident.argmax(axis=1)
    reached = confident.max(axis=1) >= 0
    given_p = probs[np.arange(len(labels)), labels]
    flagged = np.flatnonzero(
        reached & (confident_class != labels) & (probs[np.arange(len(labels)), confident_class] > given_p)
    )
    flagged = flagged[np.argsort(given_p[flagged], kind="stable")]
    return [
        Suspect(
            int(i),
            int(labels[i]),
            int(confident_class[i]),
            float(given_p[i]),
            float(probs[i, confident_class[i]]),
        )
        for i in flagged
    ]


def _moments(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of ``x[rows]``, a block at a time."""
    total = np.zeros(x.shape[1], np.float64)
    squares = np.zeros(x.shape[1], np.float64)
    for i in range(0, len(rows), BATCH):
        block = np.asarray(x[rows[i : i + BATCH]], np.float64)
        total += block.sum(axis=0)
        squares += (block * block).sum(axis=0)
    mean = total / max(len(rows), 1)
    var = np.maximum(squares / max(len(rows), 1) - mean * mean, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32) + 1e-6


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)
