"""A temperature is applied only where it helps: enough validation images to fit one, a fit inside the
range searched, and a lower log loss on validation images it was not fitted on. Otherwise it stays 1,
and the run says why (its summary, metrics.json, the report)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scenecls.calibration import (
    MIN_CALIBRATION_IMAGES,
    fit_temperature,
    held_out_check,
    judge_temperature,
    with_temperature,
)
from tests.conftest import invoke, tiny, write_class_folders


def _probabilities(n: int, factor: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Honest probabilities of 4 classes (labels drawn from them), made over-confident by ``factor``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 4))
    honest = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in honest])
    return with_temperature(honest, 1 / factor), labels


def test_an_over_confident_model_is_helped_on_images_the_temperature_was_not_fitted_on():
    sharp, labels = _probabilities(600, 3.0)
    check = held_out_check(sharp, labels)
    assert check["helps"] and check["nll_after"] < check["nll_before"]
    assert check["ece_after"] < check["ece_before"]
    fitted = fit_temperature(sharp, labels)
    assert judge_temperature(sharp, labels, fitted)[1] == ""


def test_too_few_images_or_a_fit_at_the_edge_leave_the_temperature_at_one():
    sharp, labels = _probabilities(MIN_CALIBRATION_IMAGES - 1, 3.0)
    check, why = judge_temperature(sharp, labels, fit_temperature(sharp, labels))
    assert check is None and "too few" in why and str(MIN_CALIBRATION_IMAGES) in why
    sharp, labels = _probabilities(400, 3.0)
    assert "edge" in judge_temperature(sharp, labels, 20.0)[1]


def test_a_temperature_that_does_not_help_held_back_images_is_not_applied():
    # Already honest probabilities on few images: a fit on one half follows that half's noise.
    honest, labels = _probabilities(120, 1.0, seed=5)
    check = held_out_check(honest, labels)
    _, why = judge_temperature(honest, labels, fit_temperature(honest, labels))
    assert (why == "") == check["helps"]
    if not check["helps"]:
        assert "log loss worse" in why


@pytest.mark.slow
def test_a_small_run_keeps_temperature_one_and_says_why_everywhere(tmp_path):
    data = write_class_folders(tmp_path / "data", 10, seed=1, size=40)
    project = tmp_path / "runs"
    recipe = tiny()
    result = invoke("train", "--data", str(data), *recipe, "--project", str(project), "--name", "small")
    assert result.exit_code == 0, result.output
    assert "temperature left at 1, only" in result.stderr
    assert "not fitted: only" in result.stdout  # the summary's temperature row
    metrics = json.loads((project / "small" / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert metrics["temperature"] == 1.0 and calibration["applied"] is False
    assert "too few" in calibration["not_applied"] and calibration["fitted"] > 0
    page = invoke("report", str(project / "small"))
    assert page.exit_code == 0, page.output
    assert "left at 1: only" in (project / "small" / "report.html").read_text()
