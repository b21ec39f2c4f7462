"""``--val-split 0``: training on every training image, without validation; the last epoch is the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scenecls import runs
from scenecls.data.pipeline import prepare_data
from tests.conftest import ctrl_c_at_batch, invoke, tiny, write_class_folders, write_train_test

pytestmark = pytest.mark.slow  # trains several models: left out of the fast lane (-m "not slow")

TINY = tiny()


@pytest.fixture(scope="module")
def train_and_test(tmp_path_factory) -> Path:
    """train/ (8 per class, no val/) and test/ (3 per class)."""
    root = tmp_path_factory.mktemp("noval")
    return write_train_test(root, 8, 3)


def test_val_split_0_keeps_every_training_image(train_and_test):
    data = prepare_data(train_and_test, val_split=0, seed=0)
    assert len(data.train) == 24 and not len(data.val) and not data.validated
    assert data.val_source == "none"
    assert data.held_out() == (data.test, "test")
    split = prepare_data(train_and_test, val_split=0.25, seed=0)
    assert split.validated and len(split.train) + len(split.val) == 24
    assert split.held_out() == (split.val, "validation")
    assert split.held_out(test_first=True) == (split.test, "test")
    no_test = prepare_data(train_and_test / "train", val_split=0.25, seed=0)
    assert no_test.held_out(test_first=True) == (no_test.val, "validation")


def test_val_split_0_leaves_a_val_folder_in_charge(split_dataset):
    data = prepare_data(split_dataset, val_split=0, seed=0)
    assert data.val_source == "folder" and len(data.val) == 12 and len(data.train) == 36


@pytest.mark.parametrize("cache", [[], ["--no-cache", "--ema", "0.5"]], ids=["cached", "images-ema"])
def test_training_without_validation_keeps_the_last_epoch(train_and_test, tmp_path, cache):
    project = tmp_path / "runs"
    result = invoke(
        "train", "--data", str(train_and_test), *TINY, "--val-split", "0", "--epochs", "2",
        "--finetune-epochs", "2", "--unfreeze", "1", *cache, "--project", str(project), "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "No validation images (--val-split 0): training on all 24 training images" in result.stderr
    assert "val_acc" not in result.stderr  # the epochs' lines show what there is
    out = json.loads(result.stdout)
    assert out["best_val_accuracy"] is None
    assert out["best_epoch"] == 4 and out["best_phase"] == "finetune"
    assert out["test_accuracy"] is not None
    run = project / "train"
    config = runs.read_json(run / runs.CONFIG)
    assert config["images"]["train"] == 24 and config["images"]["val"] == 0
    assert config["val_source"] == "none"
    history = runs.read_history(run / runs.HISTORY)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert all(row["val_loss"] is None and row["val_accuracy"] is None for row in history)
    assert all(np.isfinite(row["loss"]) for row in history)
    assert runs.read_json(run / runs.METRICS)["best_val_accuracy"] is None
    assert (run / runs.BEST).read_bytes() == (run / runs.LAST).read_bytes()  # the last is the best

    table = invoke("evaluate", str(run), "--format", "json")
    assert table.exit_code == 0, table.output
    assert json.loads(table.stdout)["accuracy"] == pytest.approx(out["test_accuracy"], abs=1e-6)
    plotted = invoke("plot", str(run))
    assert plotted.exit_code == 0, plotted.output
    assert (run / "curves.png").stat().st_size > 0


def test_an_interrupted_run_without_validation_resumes(train_and_test, tmp_path, monkeypatch):
    project = tmp_path / "runs"
    args = ["--data", str(train_and_test), *TINY, "--val-split", "0", "--epochs", "2",
            "--finetune-epochs", "2", "--unfreeze", "1", "--project", str(project)]  # fmt: skip
    with ctrl_c_at_batch(monkeypatch, 8):  # 3 batches an epoch: in the first fine-tuning epoch
        stopped = invoke("train", *args)
    assert stopped.exit_code == 130
    run = project / "train"
    assert runs.read_json(run / runs.STATE)["epoch"] == 2
    resumed = invoke("train", "--resume", str(run), "--format", "json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["best_epoch"] == 4
    assert [row["epoch"] for row in runs.read_history(run / runs.HISTORY)] == [1, 2, 3, 4]


@pytest.mark.parametrize("option", [["--patience", "2"], ["--lr-schedule", "plateau"]])
def test_what_watches_validation_is_refused_without_it(train_and_test, tmp_path, option):
    project = tmp_path / "runs"
    result = invoke(
        "train", "--data", str(train_and_test), *TINY, "--val-split", "0", *option, "--project", str(project)
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"{' '.join(option[:1])}" in result.stderr and "--val-split 0 trains without them" in result.stderr
    assert not (project / "train").exists()


def test_evaluate_without_test_images_says_why(tmp_path):
    data = write_class_folders(tmp_path / "photos", 6, size=32)
    project = tmp_path / "runs"
    trained = invoke(
        "train", "--data", str(data), *TINY, "--val-split", "0", "--epochs", "1", "--finetune-epochs", "0",
        "--project", str(project),
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    result = invoke("evaluate", str(project / "train"))
    assert result.exit_code == 2
    assert "trained on all its images (--val-split 0)" in result.stderr
    assert "Traceback" not in result.output


def test_a_sweep_without_validation_ranks_and_maps_by_test_accuracy(train_and_test, tmp_path):
    project = tmp_path / "runs"
    result = invoke(
        "sweep", "--backbones", "mobilenet_v2", "--unfreeze", "0", "--dense", "0,1", *TINY[2:-1],
        "--epochs", "2", "--finetune-epochs", "0", "--val-split", "0", "--data", str(train_and_test),
        "--project", str(project), "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["best_val_accuracy"] for r in rows] == [None, None]
    tests = [r["test_accuracy"] for r in rows]
    assert None not in tests and tests == sorted(tests, reverse=True)
    assert (project / "sweep" / "heatmap_mobilenet_v2.png").stat().st_size > 0
