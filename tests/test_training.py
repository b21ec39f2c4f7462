"""End to end through the CLI: train -> evaluate -> predict -> plot, interrupt and resume, finetune.

A tiny ConvNeXt (random weights, 32x32 inputs) on generated images of three colour-and-stripe classes:
its LayerNorms keep random features informative, so a few epochs separate the classes well above chance.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from scenecls import runs
from scenecls.classifier import load_model
from scenecls.cli import cli
from scenecls.data.augment import AugmentConfig
from scenecls.data.pipeline import prepare_data
from scenecls.training import callbacks
from tests.conftest import invoke, tiny, write_class_folders, write_train_test

pytestmark = pytest.mark.slow  # trains several models: left out of the fast lane (-m "not slow")

TINY = tiny()
# The module's finished run must learn: a random ConvNeXt's features separate the generated scenes at
# 32 pixels, a random MobileNetV2's do not (the other tests only need a run, and MobileNetV2 is faster).
LEARNING = tiny(backbone="convnext_tiny")
CHANCE = 1 / 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return write_train_test(root, 16, 6)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """One finished run: 3 head epochs, 1 fine-tuning epoch of the last block."""
    project = tmp_path_factory.mktemp("runs")
    result = invoke(
        "train", "--data", str(data), *LEARNING, "--epochs", "3", "--finetune-epochs", "1", "--unfreeze", "1",
        "--project", str(project), "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run_dir"] == str(project / "train")
    return project / "train"


def test_train_writes_a_complete_run_folder(trained, data):
    for name in ("config.json", "labels.json", "history.csv", "best.keras", "last.keras", "metrics.json"):
        assert (trained / name).is_file(), name
    config = json.loads((trained / "config.json").read_text())
    assert config["backbone"] == "convnext_tiny" and config["dense"] == 3 and config["seed"] == 0
    assert config["classes"] == ["alpha", "beta", "gamma"]
    assert config["data_fingerprint"] and config["versions"]["keras"]
    assert config["images"] == {"train": 39, "val": 9, "test": 18, "skipped": 0, "excluded": 0}
    assert [r["blocks"] for r in config["unfreeze_reports"]] == [[], ["stage_3_block_2"]]
    assert json.loads((trained / "labels.json").read_text())["classes"] == ["alpha", "beta", "gamma"]

    history = runs.read_history(trained / "history.csv")
    assert [(r["epoch"], r["phase"]) for r in history] == [
        (1, "head"),
        (2, "head"),
        (3, "head"),
        (4, "finetune"),
    ]
    # The default cosine decay: under 1e-3 after the first head epoch, 0 at the end of each phase.
    assert 0 < history[0]["lr"] < 1e-3 and history[2]["lr"] == history[3]["lr"] == pytest.approx(0, abs=1e-12)
    assert all(r["seconds"] > 0 for r in history)

    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["best_val_accuracy"] == max(r["val_accuracy"] for r in history)
    assert metrics["best_val_accuracy"] > CHANCE + 0.3
    assert metrics["test_accuracy"] > CHANCE + 0.3
    assert json.loads((trained / "state.json").read_text())["status"] == "finished"
    assert metrics["feature_cache"] == "built" and set(metrics["phase_seconds"]) == {"head", "finetune"}
    assert load_model(trained / "best.keras").output_shape == (None, 3)
    assert load_model(trained / "last.keras", compile=True).optimizer is not None


def test_evaluate(trained):
    result = invoke("evaluate", str(trained), "--format", "json")
    assert result.exit_code == 0, result.output
    ev = json.loads(result.stdout)
    assert ev["split"] == "test" and ev["images"] == 18
    assert ev["accuracy"] > CHANCE + 0.3
    assert sum(map(sum, ev["confusion"])) == 18
    assert [row["support"] for row in ev["per_class"]] == [6, 6, 6]
    assert json.loads((trained / "evaluation.json").read_text())["accuracy"] == ev["accuracy"]
    rows = list(csv.DictReader(io.StringIO((trained / "predictions.csv").read_text())))
    assert len(rows) == 18 and set(rows[0]) == {"path", "true", "predicted", "confidence", "loss"}

    as_csv = invoke("evaluate", str(trained), "--split", "val", "--format", "csv")
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["class"] for r in table] == ["alpha", "beta", "gamma", "macro avg", "weighted avg"]


def test_predict_mixed_good_and_bad_files(trained, data, tmp_path):
    good = sorted((data / "test" / "beta").iterdir())[:3]
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good[0].read_bytes()[:300])
    Image.new("CMYK", (50, 30), (0, 200, 200, 0)).save(tmp_path / "cmyk.jpg")
    inputs = [str(good[0]), str(tmp_path / "zero.jpg"), str(good[1]), str(tmp_path / "notes.jpg"), str(cut),
              str(tmp_path / "missing.jpg"), str(good[2]), str(tmp_path / "cmyk.jpg")]  # fmt: skip
    result = invoke("predict", *inputs, "--model", str(trained), "--format", "jsonl", "--top-k", "2")
    assert result.exit_code == 3  # some inputs failed
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == inputs
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"zero.jpg", "notes.jpg", "cut.jpg", "missing.jpg"}
    predicted = [r for r in rows if not r["error"]]
    assert all(len(r["top"]) == 2 and 0 <= r["confidence"] <= 1 for r in predicted)
    assert sum(r["label"] == "beta" for r in predicted[:3]) >= 2

    all_good = invoke("predict", str(data / "test" / "alpha"), "--model", str(trained / "best.keras"))
    assert all_good.exit_code == 0
    all_bad = invoke(
        "predict", str(tmp_path / "zero.jpg"), str(cut), "--model", str(trained), "--format", "csv"
    )
    assert all_bad.exit_code == 4 and "none of the 2 inputs" in all_bad.stderr
    assert [r["error"] != "" for r in csv.DictReader(io.StringIO(all_bad.stdout))] == [True, True]

    listed = "\n".join(str(p) for p in good) + "\n"
    piped = invoke("predict", "-", "--model", str(trained), "--format", "csv", input=listed)
    assert piped.exit_code == 0
    table = list(csv.DictReader(io.StringIO(piped.stdout)))
    assert [r["path"] for r in table] == [str(p) for p in good]
    assert all(r["label"] in {"alpha", "beta", "gamma"} and r["error"] == "" for r in table)


def test_plot_writes_pngs(trained, tmp_path):
    result = invoke("plot", str(trained), "--format", "json")
    assert result.exit_code == 0, result.output
    paths = [Path(p) for p in json.loads(result.stdout)]
    assert {p.name for p in paths} == {"curves.png", "confusion.png", "samples.png", "top_losses.png",
                                       "reliability.png", "risk_coverage.png"}  # fmt: skip
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300


@pytest.mark.parametrize("cache", ["--no-cache", "--cache-aug=0"], ids=["images", "cached-features"])
def test_interrupt_mid_epoch_then_resume(data, tmp_path, monkeypatch, cache):
    calls = {"n": 0}
    original = callbacks.BatchProgress.on_train_batch_end

    def interrupt_in_epoch_two(self, batch, logs=None):
        calls["n"] += 1
        if calls["n"] == 7:  # 5 batches per epoch: this is batch 2 of epoch 2
            raise KeyboardInterrupt
        original(self, batch, logs)

    monkeypatch.setattr(callbacks.BatchProgress, "on_train_batch_end", interrupt_in_epoch_two)
    project = tmp_path / "runs"
    args = ["--data", str(data), *TINY, "--epochs", "2", "--finetune-epochs", "1", "--unfreeze", "1", cache]
    result = invoke("-q", "train", *args, "--project", str(project))
    assert result.exit_code == 130
    assert f"scenecls train --resume {project / 'train'}" in result.stderr  # shown even with -q
    run = project / "train"
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "interrupted" and state["epoch"] == 1
    assert len(runs.read_history(run / "history.csv")) == 1
    assert (run / "best.keras").is_file() and (run / "last.keras").is_file()
    checkpoint = load_model(run / "last.keras", compile=True)
    # The optimizer's state after epoch 1 is in the checkpoint (a fresh optimizer would be at 0; Keras
    # counts the end-of-data probe of a dataset of unknown length as one more step).
    assert int(checkpoint.optimizer.iterations) in (5, 6)

    monkeypatch.setattr(callbacks.BatchProgress, "on_train_batch_end", original)
    resumed = invoke("train", "--resume", str(run), "--format", "json")
    assert resumed.exit_code == 0, resumed.output
    history = runs.read_history(run / "history.csv")
    assert [(r["epoch"], r["phase"]) for r in history] == [(1, "head"), (2, "head"), (3, "finetune")]
    assert json.loads(resumed.stdout)["epochs"] == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["feature_cache"] == ("off" if cache == "--no-cache" else "reused")
    assert json.loads((run / "state.json").read_text())["status"] == "finished"
    again = invoke("train", "--resume", str(run))
    assert again.exit_code == 0 and "already finished" in again.stderr


def test_crash_in_the_cached_phase_resumes_from_the_head_checkpoint(data, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = callbacks.BatchProgress.on_train_batch_end

    def crash_in_epoch_three(self, batch, logs=None):
        calls["n"] += 1
        if calls["n"] == 12:  # 5 batches per epoch: batch 2 of epoch 3; no Ctrl-C, no clean-up
            raise RuntimeError("the machine went away")
        original(self, batch, logs)

    monkeypatch.setattr(callbacks.BatchProgress, "on_train_batch_end", crash_in_epoch_three)
    project = tmp_path / "runs"
    args = ["--data", str(data), *TINY, "--epochs", "4", "--unfreeze", "0", "--project", str(project)]
    assert invoke("-q", "train", *args).exit_code == 1
    run = project / "train"
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "failed" and state["error"] == "the machine went away"
    assert state["epoch"] == 2 and state["head_checkpoint"]
    # The epochs live in the head checkpoint; last.keras is the model as phase 1 began (untrained head).
    assert (run / "last_head.npz").is_file() and (run / "best_head.npz").is_file()
    assert int(load_model(run / "last.keras", compile=True).optimizer.iterations) == 0

    monkeypatch.setattr(callbacks.BatchProgress, "on_train_batch_end", original)
    resumed = invoke("train", "--resume", str(run), "--format", "json")
    assert resumed.exit_code == 0, resumed.output
    assert [r["epoch"] for r in runs.read_history(run / "history.csv")] == [1, 2, 3, 4]
    last = load_model(run / "last.keras", compile=True)
    assert int(last.optimizer.iterations) >= 4 * 5  # two epochs restored, two trained on
    assert not (run / "last_head.npz").exists() and not (run / "best_head.npz").exists()
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "finished" and not state["head_checkpoint"]
    best = json.loads(resumed.stdout)
    assert best["best_val_accuracy"] > CHANCE and (run / "best.keras").is_file()


def test_ctrl_c_while_caching_features_is_an_interrupted_run(data, tmp_path, monkeypatch):
    from scenecls.caches import features

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(features, "compute_features", interrupted)
    project = tmp_path / "runs"
    args = ["--data", str(data), *TINY, "--epochs", "1", "--unfreeze", "0", "--seed", "7"]  # a new cache key
    result = invoke("-q", "train", *args, "--project", str(project))
    assert result.exit_code == 130
    assert f"scenecls train --resume {project / 'train'}" in result.stderr
    state = json.loads((project / "train" / "state.json").read_text())
    assert state["status"] == "interrupted" and state["epoch"] == 0

    monkeypatch.undo()
    resumed = invoke("train", "--resume", str(project / "train"), "--format", "json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["epochs"] == 1


def test_finetune_a_run_and_refuse_mismatches(trained, data, tmp_path):
    project = tmp_path / "runs"
    result = invoke(
        "-q", "finetune", str(trained), "--unfreeze", "2", "--finetune-epochs", "1", "--no-export",
        "--project", str(project), "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # --quiet
    child = Path(json.loads(result.stdout)["run_dir"])
    assert child.parent == project
    config = json.loads((child / "config.json").read_text())
    assert config["parent"] == str(trained) and config["epochs"] == 0
    assert [r["phase"] for r in runs.read_history(child / "history.csv")] == ["finetune"]

    other = tmp_path / "four"
    write_class_folders(other, 4, classes=("alpha", "beta", "gamma", "delta"), size=16)
    refused = invoke("finetune", str(trained), "--data", str(other), "--project", str(project))
    assert refused.exit_code == 1
    assert "classes" in refused.stderr and "Traceback" not in refused.output

    wrong_backbone = invoke("finetune", str(trained), "--backbone", "xception", "--project", str(project))
    assert wrong_backbone.exit_code == 1 and "convnext_tiny" in wrong_backbone.stderr


def test_finetune_validates_on_the_images_its_parent_held_out(data, tmp_path):
    project = tmp_path / "runs"
    parent = invoke(
        "train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "0", "--seed", "3",
        "--project", str(project), "--name", "parent",
    )  # fmt: skip
    assert parent.exit_code == 0, parent.output
    child = invoke(
        "finetune", str(project / "parent"), "--unfreeze", "1", "--finetune-epochs", "1", "--no-export",
        "--project", str(project), "--name", "child",
    )  # fmt: skip
    assert child.exit_code == 0, child.output
    config = json.loads((project / "child" / "config.json").read_text())
    assert config["seed"] == 0 and config["split_seed"] == 3  # its own seed, its parent's split

    def validated_on(run: str) -> list[str]:
        result = invoke("evaluate", str(project / run), "--split", "val", "--format", "json")
        assert result.exit_code == 0, result.output
        return sorted(row["path"] for row in runs.read_rows_csv(project / run / "predictions.csv"))

    held_out = validated_on("parent")
    assert validated_on("child") == held_out
    own_split = prepare_data(data, val_split=0.2, seed=0).val.paths
    assert sorted(own_split) != held_out  # what seed 0 would have split off instead


def test_augmentation_strengths_are_options_that_a_finetune_inherits(data, tmp_path):
    project = tmp_path / "runs"
    parent = invoke(
        "train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "0", "--rotation", "15",
        "--shift", "0.05", "--no-flip", "--project", str(project), "--name", "parent",
    )  # fmt: skip
    assert parent.exit_code == 0, parent.output

    def augment(run: str) -> dict:
        return json.loads((project / run / "config.json").read_text())["augment"]

    defaults = AugmentConfig().to_dict()
    assert augment("parent") == {**defaults, "rotation": 15.0, "shift": 0.05, "flip": False}
    for name, options in [("same", []), ("zoom", ["--zoom", "0.15", "--flip"]), ("off", ["--no-augment"])]:
        child = invoke(
            "finetune", str(project / "parent"), "--unfreeze", "1", "--finetune-epochs", "1", "--no-export",
            *options, "--project", str(project), "--name", name,
        )  # fmt: skip
        assert child.exit_code == 0, child.output
    assert augment("same") == augment("parent")
    assert augment("zoom") == {**augment("parent"), "zoom": 0.15, "flip": True}
    assert augment("off") == {"rotation": 0.0, "shift": 0.0, "shear": 0.0, "zoom": 0.0, "flip": False}

    both = CliRunner().invoke(cli, ["train", "--data", str(data), *TINY, "--no-augment", "--rotation", "5"])
    assert both.exit_code == 2 and "--no-augment" in both.stderr and "--rotation" in both.stderr
    assert len(both.stderr.strip().splitlines()) == 1


def test_bad_inputs_are_one_line_errors(tmp_path):
    missing = invoke("train", "--data", str(tmp_path / "nothing"), *TINY, "--project", str(tmp_path / "r"))
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    no_runs = invoke("predict", "x.jpg", "--project", str(tmp_path / "none"))
    assert no_runs.exit_code == 1 and "no trained run" in no_runs.stderr
    nothing_fetched = invoke("train", *TINY, "--project", str(tmp_path / "r"))
    assert nothing_fetched.exit_code == 1 and "scenecls fetch-data" in nothing_fetched.stderr
    bad_unfreeze = invoke("train", "--data", str(tmp_path), "--unfreeze", "lots", "--project", str(tmp_path))
    assert bad_unfreeze.exit_code == 2
    for result in (missing, no_runs, nothing_fetched, bad_unfreeze):
        assert "Traceback" not in result.output


def test_cosine_schedule_and_early_stopping(data, tmp_path):
    project = tmp_path / "runs"
    result = invoke(
        "train", "--data", str(data), *TINY, "--epochs", "6", "--unfreeze", "0", "--lr-schedule", "cosine",
        "--project", str(project), "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rates = [r["lr"] for r in runs.read_history(project / "train" / "history.csv")]
    assert len(rates) == 6 and rates == sorted(rates, reverse=True) and rates[-1] < rates[0] / 10

    stopped = invoke(
        "train", "--data", str(data), *TINY, "--epochs", "8", "--unfreeze", "0", "--patience", "1",
        "--project", str(project), "--format", "json",
    )  # fmt: skip
    summary = json.loads(stopped.stdout)
    history = runs.read_history(Path(summary["run_dir"]) / "history.csv")
    best = max(r["val_accuracy"] for r in history)
    first_best = next(r["epoch"] for r in history if r["val_accuracy"] == best)
    assert summary["stopped_early"] and len(history) < 8
    assert len(history) == first_best + 1  # one epoch of patience after the best, then stop
    assert summary["best_epoch"] == first_best
