"""Recipe options: label smoothing and learning-rate warm-up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from scenecls.cli import cli
from scenecls.training import runs
from tests.conftest import ctrl_c_at_batch, write_class_folders

TINY = ["--backbone", "mobilenet_v2", "--weights", "none", "--image-size", "32", "-b", "8", "--no-export"]


def test_smoothed_loss_is_cross_entropy_against_smoothed_targets():
    from scenecls.losses import SmoothedSparseCrossentropy

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    labels = np.array([0, 1])
    targets = np.full((2, 3), 0.1 / 3) + np.eye(3)[labels] * 0.9
    expected = np.mean(-np.sum(targets * np.log(probs), axis=1))
    assert float(SmoothedSparseCrossentropy(0.1)(labels, probs)) == pytest.approx(expected, rel=1e-5)
    plain = np.mean(-np.log(probs[[0, 1], labels]))
    assert float(SmoothedSparseCrossentropy(0.0)(labels, probs)) == pytest.approx(plain, rel=1e-5)


def test_warm_up_and_smoothing_train_save_and_resume(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "data", 8, seed=5, size=40)
    project = tmp_path / "runs"
    args = ["train", "--data", str(data), *TINY, "--epochs", "3", "--finetune-epochs", "0", "--no-cache",
            "--warmup-epochs", "2", "--label-smoothing", "0.1", "--project", str(project)]  # fmt: skip
    with ctrl_c_at_batch(monkeypatch, 7):  # 3 batches an epoch: batch 1 of epoch 3
        assert CliRunner().invoke(cli, args).exit_code == 130
    # The checkpoint holds the smoothed loss and the warm-up schedule, and loads in safe mode.
    resumed = CliRunner().invoke(cli, ["train", "--resume", str(project / "train"), "--format", "json"])
    assert resumed.exit_code == 0, resumed.output
    history = runs.read_history(project / "train" / "history.csv")
    rates = [r["lr"] for r in history]
    # Half-way through the 2-epoch warm-up after epoch 1 (Keras counts one more step per epoch on data
    # of unknown length, so a little past half), the full rate from then on.
    assert 4e-4 < rates[0] < 7.5e-4 and rates[1:] == pytest.approx([1e-3, 1e-3])
    config = json.loads((project / "train" / "config.json").read_text())
    assert config["label_smoothing"] == 0.1 and config["warmup_epochs"] == 2


def test_warm_up_with_plateau_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "data", 4, size=16)
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--data",
            str(data),
            *TINY,
            "--warmup-epochs",
            "1",
            "--lr-schedule",
            "plateau",
            "--project",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 2 and "--warmup-epochs" in result.stderr
    assert not Path(tmp_path / "runs" / "train").exists()


def test_range_test_analysis_finds_the_valley():
    from scenecls.training.lr_find import analyse

    lrs = list(np.logspace(-6, 0, 61))

    def loss(lr: float) -> float:  # flat, falling fastest near 1e-3, lowest at 1e-2, then exploding
        falling = 1.5 / (1 + np.exp(-4 * (np.log10(lr) + 3)))
        return 2.0 - falling + (50 * (lr - 1e-2) if lr > 1e-2 else 0.0)

    found = analyse(lrs, [loss(lr) for lr in lrs])
    assert len(found["losses"]) == len(lrs)
    assert 5e-3 <= found["min_loss_lr"] <= 5e-2  # the smoothing lags the raw curve a little
    assert 1e-4 <= found["steepest_lr"] <= found["min_loss_lr"] <= found["edge_lr"]
    assert found["suggestion"] == found["min_loss_lr"] / 10 and found["rule"] == "lowest loss / 10"


def test_range_test_from_a_trained_model_suggests_below_the_edge():
    """Flat (noisy) and then rising, as from a trained head: the lowest point is noise, the edge is not."""
    from scenecls.training.lr_find import analyse

    lrs = list(np.logspace(-7, -2, 51))
    noise = np.random.default_rng(0).normal(0, 0.01, len(lrs))
    losses = [
        0.2 + n + (3 * (lr - 5e-4) / 5e-4 if lr > 5e-4 else 0.0) for lr, n in zip(lrs, noise, strict=True)
    ]
    found = analyse(lrs, losses)
    assert found["rule"] == "edge of the flat loss / 10"
    assert 2e-4 <= found["edge_lr"] <= 2e-3 and found["suggestion"] == found["edge_lr"] / 10


def test_lr_find_head_and_finetune(tmp_path):
    data = write_class_folders(tmp_path / "data", 8, seed=6, size=40)
    project = tmp_path / "runs"
    common = ["-b", "4", "--project", str(project), "--format", "json"]
    model = ["--backbone", "mobilenet_v2", "--weights", "none", "--image-size", "32"]
    head = CliRunner().invoke(cli, ["lr-find", "--data", str(data), *model, "--steps", "20", *common])
    assert head.exit_code == 0, head.output
    result = json.loads(head.stdout)
    assert result["phase"] == "head" and result["option"] == "--lr"
    assert 1e-7 <= result["suggestion"] <= 1.0
    assert result["suggestion"] in (
        pytest.approx(result["min_loss_lr"] / 10),
        pytest.approx(result["edge_lr"] / 10),
    )
    assert 3 <= len(result["losses"]) <= 20 and len(result["lrs"]) == len(result["losses"])
    assert all(a < b for a, b in zip(result["lrs"], result["lrs"][1:], strict=False))
    assert Path(result["plot"]).read_bytes().startswith(b"\x89PNG")

    train = ["train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "0"]
    assert CliRunner().invoke(cli, [*train, "--project", str(project)]).exit_code == 0
    run = str(project / "train")
    fine = CliRunner().invoke(cli, ["lr-find", "--run", run, "--unfreeze", "2", "--steps", "12", *common])
    assert fine.exit_code == 0, fine.output
    report = json.loads(fine.stdout)
    assert report["phase"] == "finetune" and report["option"] == "--finetune-lr"
