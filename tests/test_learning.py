"""Real learning with real ImageNet weights: MobileNetV2 on the shared Intel sample must classify real
photographs well, through both ways of giving the weights. Skipped, with the reason, where the shared
folder beside the project is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from scenecls.cli import cli
from tests.conftest import MINI, SHARED, WEIGHTS_FILE

KERAS_CACHE = SHARED / "weights" / "keras-cache" / "models"
TARGET = 0.85  # a linear probe on these features scores 0.91; random weights 0.51

pytestmark = [
    pytest.mark.skipif(
        not (MINI.is_file() and WEIGHTS_FILE.is_file() and KERAS_CACHE.is_dir()),
        reason="needs ../shared/data/intel-mini.zip and ../shared/weights (real MobileNetV2 weights)",
    ),
    pytest.mark.slow,  # real weights on real images: left out of the fast lane (-m "not slow")
]

# Phase 1 only, on cached features: seconds on 2 cores, and what the weights alone are worth.
RECIPE = ["--backbone", "mobilenet_v2", "--epochs", "10", "--finetune-epochs", "0", "--format", "json"]


@pytest.fixture(scope="module")
def intel_mini(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("intel") / "intel-mini"
    result = CliRunner().invoke(cli, ["-q", "fetch-data", "--from", str(MINI), "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    return dest


def test_weights_file_learns_real_scenes(intel_mini, tmp_path):
    project = tmp_path / "runs"
    args = ["train", "--data", str(intel_mini), *RECIPE, "--weights", str(WEIGHTS_FILE),
            "--project", str(project), "--fail-under", str(TARGET)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["test_accuracy"] >= TARGET
    # The gate on evaluate: outputs first, then exit code 5 when below the bar.
    evaluated = CliRunner().invoke(
        cli, ["evaluate", summary["run_dir"], "--fail-under", "0.999", "--format", "json"]
    )
    assert evaluated.exit_code == 5, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert (Path(summary["run_dir"]) / "evaluation.json").is_file()
    assert "below --fail-under" in evaluated.stderr
    # The run's best.tflite (written by default) predicts as best.keras on real photographs ...
    export = json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())["export"]
    assert export["tflite"] == "best.tflite" and export["top1_agreement"] >= 0.99
    # ... and an int8 model calibrated on the run's own images keeps its accuracy.
    int8 = CliRunner().invoke(cli, ["-q", "export", summary["run_dir"], "--quantize", "int8", "--json"])
    assert int8.exit_code == 0, int8.output
    parity = json.loads(int8.stdout)["parity"]
    assert parity["top1_agreement"] >= 0.9 and parity["exported_accuracy"] >= TARGET


def test_imagenet_weights_through_the_keras_cache_learn_real_scenes(intel_mini, tmp_path):
    """``--weights imagenet`` as users give it, with KERAS_HOME set before Python starts."""
    keras_home = tmp_path / "keras"
    (keras_home / "models").mkdir(parents=True)
    for weights in KERAS_CACHE.glob("*.h5"):
        (keras_home / "models" / weights.name).symlink_to(weights)
    env = {**os.environ, "KERAS_HOME": str(keras_home)}
    args = ["-q", "train", "--data", str(intel_mini), *RECIPE, "--weights", "imagenet", "--no-export",
            "--project", str(tmp_path / "runs")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "scenecls", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["test_accuracy"] >= TARGET
