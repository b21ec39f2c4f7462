"""The pictures say what the numbers say: reliability points of enough images, the best epoch
marked where training kept it, samples in the run's own proportion of right and wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from scenecls.calibration import reliability_bins
from scenecls.plots import MIN_BIN_IMAGES, best_epoch, merged_bins, plot_reliability, sample_rows


def test_reliability_bins_are_merged_until_each_holds_enough_images_and_keep_every_image():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (300, 6))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 6, 300)
    bins = reliability_bins(probs, labels)
    merged = merged_bins(bins)
    assert all(row["count"] >= MIN_BIN_IMAGES for row in merged)
    assert sum(row["count"] for row in merged) == 300
    correct = sum(row["accuracy"] * row["count"] for row in merged)
    assert round(correct) == int((probs.argmax(axis=1) == labels).sum())
    assert [row["low"] for row in merged] == sorted(row["low"] for row in merged)
    few = merged_bins(reliability_bins(probs[:7], labels[:7]))
    assert len(few) == 1 and few[0]["count"] == 7  # fewer images than a point needs: one point


def test_the_best_epoch_is_the_first_with_the_highest_validation_accuracy():
    history = [{"epoch": e, "val_accuracy": a} for e, a in [(1, 0.5), (2, 0.8), (3, 0.8), (4, 0.7)]]
    assert best_epoch(history) == 2
    assert best_epoch([{"epoch": 1, "val_accuracy": None}]) is None


def test_samples_are_drawn_in_the_runs_proportion_of_right_and_wrong():
    rows = [{"path": "x.png", "true": "a", "predicted": "a", "confidence": 0.9} for _ in range(90)]
    rows += [{"path": "x.png", "true": "a", "predicted": "b", "confidence": 0.6} for _ in range(10)]
    chosen, title = sample_rows(rows, count=20)
    assert len(chosen) == 20 and sum(r["true"] != r["predicted"] for r in chosen) == 2
    assert "2 wrong" in title and "90% right" in title
    chosen, _ = sample_rows(rows[:90] + rows[-1:], count=16)
    assert sum(r["true"] != r["predicted"] for r in chosen) == 1  # one wrong in 91 is still shown


def test_a_reliability_diagram_of_few_images_is_drawn(tmp_path):
    probs = np.full((30, 3), 1 / 3)
    probs[:, 0] += 0.3
    probs /= probs.sum(axis=1, keepdims=True)
    calibration = {"ece": 0.1, "bins": reliability_bins(probs, np.zeros(30, dtype=int))}
    path = plot_reliability(calibration, tmp_path / "r.png")
    assert Path(path).stat().st_size > 0 and Image.open(path).size[0] > 400
