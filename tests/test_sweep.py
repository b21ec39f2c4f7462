"""A tiny sweep: every run trained, results written, an interrupted sweep resumed without redoing runs."""

from __future__ import annotations

import csv
import io
import json

from click.testing import CliRunner
from PIL import Image

from scenecls.cli import cli
from scenecls.training import callbacks, runs
from tests.conftest import write_class_folders

GRID = ["--backbones", "convnext_tiny,mobilenet_v2", "--unfreeze", "0,1", "--dense", "0,1"]
TINY = ["--weights", "none", "--image-size", "32", "-b", "8", "--epochs", "1", "--finetune-epochs", "1"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_dry_run_lists_the_grid(tmp_path):
    result = invoke("sweep", *GRID, *TINY, "--project", str(tmp_path), "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["run"] for r in rows] == [
        f"{b}-d{d}-u{u}" for b in ("convnext_tiny", "mobilenet_v2") for u in (0, 1) for d in (0, 1)
    ]
    frozen = [r for r in rows if r["unfreeze"] == "0"]
    assert all(r["unfrozen_layers"] == 0 and r["phases"] == "head x1" for r in frozen)
    assert {r["unfrozen_blocks"] for r in rows if r["unfreeze"] == "1"} == {1}
    assert not (tmp_path / "sweep").exists()  # nothing trained, nothing written


def test_sweep_runs_resumes_and_reports(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "data" / "train", 8, size=32).parent
    write_class_folders(data / "test", 2, seed=3, size=32)
    project = tmp_path / "runs"
    args = ["sweep", *GRID, *TINY, "--data", str(data), "--project", str(project)]

    calls = {"n": 0}
    original = callbacks.BatchProgress.on_train_batch_end

    def interrupt_in_third_run(self, batch, logs=None):
        calls["n"] += 1
        if calls["n"] == 8:  # 3 batches an epoch: runs 1-2 take 3 each, run 3 is in its 2nd epoch
            raise KeyboardInterrupt
        original(self, batch, logs)

    monkeypatch.setattr(callbacks.BatchProgress, "on_train_batch_end", interrupt_in_third_run)
    first = invoke(*args)
    assert first.exit_code == 130 and "same command again" in first.stderr
    sweep = project / "sweep"
    done = {
        p.name: (p / "history.csv").stat().st_mtime_ns
        for p in sweep.iterdir()
        if (p / "metrics.json").exists()
    }
    assert sorted(done) == ["convnext_tiny-d0-u0", "convnext_tiny-d1-u0"]
    third = sweep / "convnext_tiny-d0-u1"
    assert json.loads((third / "state.json").read_text())["status"] == "interrupted"

    monkeypatch.setattr(callbacks.BatchProgress, "on_train_batch_end", original)
    second = invoke(*args, "--format", "json")
    assert second.exit_code == 0, second.output
    assert second.stderr.count("finished earlier, skipped") == 2
    assert "convnext_tiny-d0-u1: resuming" in second.stderr
    for name, mtime in done.items():  # finished runs were not trained again
        assert (sweep / name / "history.csv").stat().st_mtime_ns == mtime
    assert [r["phase"] for r in runs.read_history(third / "history.csv")] == ["head", "finetune"]

    rows = json.loads(second.stdout)
    assert len(rows) == 8
    accuracies = [r["best_val_accuracy"] for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert json.loads((sweep / "results.json").read_text()) == rows
    table = list(csv.DictReader(io.StringIO((sweep / "results.csv").read_text())))
    assert len(table) == 8 and {r["backbone"] for r in table} == {"convnext_tiny", "mobilenet_v2"}
    assert all(r["test_accuracy"] != "" for r in table)
    assert len((sweep / "results.md").read_text().splitlines()) == 10
    for backbone in ("convnext_tiny", "mobilenet_v2"):
        with Image.open(sweep / f"heatmap_{backbone}.png") as image:
            assert image.format == "PNG"
    # Runs of one backbone share the feature cache: built once, then reused.
    caches = [json.loads((sweep / r["run"] / "metrics.json").read_text())["feature_cache"] for r in table]
    assert caches.count("built") == 2 and caches.count("reused") == 6, caches

    again = invoke(*args)
    assert again.exit_code == 0 and again.stderr.count("finished earlier, skipped") == 8


def test_a_different_sweep_in_the_same_folder_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "data", 4, size=16)
    project = tmp_path / "runs"
    (project / "sweep").mkdir(parents=True)
    (project / "sweep" / "sweep.json").write_text(json.dumps({"grid": [], "base": {}}))
    result = invoke("sweep", *GRID, *TINY, "--data", str(data), "--project", str(project))
    assert result.exit_code == 1 and "different sweep" in result.stderr
