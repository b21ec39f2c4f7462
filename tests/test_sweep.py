"""A tiny sweep: every run trained, results written, an interrupted sweep resumed without redoing runs."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from scenecls import runs
from scenecls.cli import cli
from scenecls.training import callbacks
from tests.conftest import invoke, tiny, write_class_folders

pytestmark = pytest.mark.slow  # trains several models: left out of the fast lane (-m "not slow")

GRID = ["--backbones", "convnext_tiny,mobilenet_v2", "--unfreeze", "0,1", "--dense", "0,1"]
# What the training tests run: both backbones and both kinds of run, half the grid (every run costs seconds).
TRAIN_GRID = ["--backbones", "convnext_tiny,mobilenet_v2", "--unfreeze", "0,1", "--dense", "0"]
TINY = tiny("--epochs", "1", "--finetune-epochs", "1", backbone=None, export=True)


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
    args = ["sweep", *TRAIN_GRID, *TINY, "--data", str(data), "--project", str(project)]

    calls = {"n": 0}
    original = callbacks.BatchProgress.on_train_batch_end

    def interrupt_in_second_run(self, batch, logs=None):
        calls["n"] += 1
        if calls["n"] == 8:  # 3 batches an epoch: run 1 takes 3, run 2 is in its 2nd epoch (fine-tuning)
            raise KeyboardInterrupt
        original(self, batch, logs)

    monkeypatch.setattr(callbacks.BatchProgress, "on_train_batch_end", interrupt_in_second_run)
    first = invoke(*args)
    assert first.exit_code == 130 and "same command again" in first.stderr
    sweep = project / "sweep"
    done = {
        p.name: (p / "history.csv").stat().st_mtime_ns
        for p in sweep.iterdir()
        if (p / "metrics.json").exists()
    }
    assert sorted(done) == ["convnext_tiny-d0-u0"]
    second_run = sweep / "convnext_tiny-d0-u1"
    assert json.loads((second_run / "state.json").read_text())["status"] == "interrupted"

    monkeypatch.setattr(callbacks.BatchProgress, "on_train_batch_end", original)
    second = invoke(*args, "--format", "json")
    assert second.exit_code == 0, second.output
    assert second.stderr.count("finished earlier, skipped") == 1
    assert "convnext_tiny-d0-u1: resuming" in second.stderr
    for name, mtime in done.items():  # finished runs were not trained again
        assert (sweep / name / "history.csv").stat().st_mtime_ns == mtime
    assert [r["phase"] for r in runs.read_history(second_run / "history.csv")] == ["head", "finetune"]

    rows = json.loads(second.stdout)
    assert len(rows) == 4
    accuracies = [r["best_val_accuracy"] for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert json.loads((sweep / "results.json").read_text()) == rows
    table = list(csv.DictReader(io.StringIO((sweep / "results.csv").read_text())))
    assert len(table) == 4 and {r["backbone"] for r in table} == {"convnext_tiny", "mobilenet_v2"}
    assert all(r["test_accuracy"] != "" for r in table)
    assert len((sweep / "results.md").read_text().splitlines()) == 6
    for backbone in ("convnext_tiny", "mobilenet_v2"):
        with Image.open(sweep / f"heatmap_{backbone}.png") as image:
            assert image.format == "PNG"
    # Runs of one backbone share the feature cache: built once, then reused.
    caches = [json.loads((sweep / r["run"] / "metrics.json").read_text())["feature_cache"] for r in table]
    assert caches.count("built") == 2 and caches.count("reused") == 2, caches

    again = invoke(*args)
    assert again.exit_code == 0 and again.stderr.count("finished earlier, skipped") == 4


def test_a_different_sweep_in_the_same_folder_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "data", 4, size=16)
    project = tmp_path / "runs"
    (project / "sweep").mkdir(parents=True)
    (project / "sweep" / "sweep.json").write_text(json.dumps({"grid": [], "base": {}}))
    result = invoke("sweep", *GRID, *TINY, "--data", str(data), "--project", str(project))
    assert result.exit_code == 1 and "different sweep" in result.stderr


def test_two_shards_in_two_processes_make_the_unsharded_table(tmp_path):
    """Job-array style: two processes at once, one shared project folder and feature cache; the shares
    are disjoint and complete, and the collected table is the one a single sweep makes."""
    import os
    import subprocess
    import sys

    data = write_class_folders(tmp_path / "data" / "train", 6, size=32).parent
    write_class_folders(data / "test", 2, seed=3, size=32)
    grid = ["--backbones", "mobilenet_v2", "--unfreeze", "0,1", "--dense", "0,1"]
    args = ["sweep", *grid, *TINY, "--data", str(data), "--format", "json"]
    env = {**os.environ, "SCENECLS_HOME": str(tmp_path / "home")}

    def scenecls(*extra: str):
        command = [sys.executable, "-m", "scenecls", "-q", *args, *extra]
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    shards = [scenecls("--project", str(tmp_path / "sharded"), "--shard", f"{i}/2") for i in (1, 2)]
    outputs = [shard.communicate(timeout=600) for shard in shards]
    assert [shard.returncode for shard in shards] == [0, 0], [err for _, err in outputs]
    shares = [{row["run"] for row in json.loads(out)} for out, _ in outputs]
    assert shares[0].isdisjoint(shares[1]) and len(shares[0]) == len(shares[1]) == 2
    assert not (tmp_path / "sharded" / "sweep" / "results.csv").exists()  # shards write no table

    collected = invoke(*args, "--project", str(tmp_path / "sharded"), "--collect")
    assert collected.exit_code == 0, collected.output
    whole = scenecls("--project", str(tmp_path / "whole"))
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    merged = {row["run"]: row for row in json.loads(collected.stdout)}
    single = {row["run"]: row for row in json.loads(out)}
    assert set(merged) == set(single) == shares[0] | shares[1]
    for name, row in single.items():
        for key in ("best_val_accuracy", "test_accuracy", "epochs", "trainable_params", "unfrozen_layers"):
            assert merged[name][key] == pytest.approx(row[key], abs=1e-6), (name, key)
    assert (tmp_path / "sharded" / "sweep" / "heatmap_mobilenet_v2.png").is_file()

    state = tmp_path / "sharded" / "sweep" / "mobilenet_v2-d1-u1" / "state.json"
    state.rename(state.with_suffix(".lost"))
    incomplete = invoke(*args, "--project", str(tmp_path / "sharded"), "--collect")
    assert incomplete.exit_code == 3 and "mobilenet_v2-d1-u1" in incomplete.stderr

    state.with_suffix(".lost").rename(state)
    metrics = state.with_name("metrics.json")
    metrics.write_text("garbage, not JSON")  # finished, but its results cannot be read
    damaged = invoke(*args, "--project", str(tmp_path / "sharded"), "--collect")
    assert damaged.exit_code == 3
    assert "1 of 4 runs are damaged" in damaged.stderr and "mobilenet_v2-d1-u1" in damaged.stderr
    assert "mobilenet_v2-d1-u1" not in {row["run"] for row in json.loads(damaged.stdout)}


def test_shard_arguments_are_checked():
    from scenecls.training.sweep import GridPoint, parse_shard, shard_points

    assert parse_shard("2/3") == (2, 3)
    points = [GridPoint("b", d, "0") for d in range(7)]
    shares = [shard_points(points, i, 3) for i in (1, 2, 3)]
    assert sorted(p.dense for share in shares for p in share) == list(range(7))
    assert [len(share) for share in shares] == [3, 2, 2]
    for bad in ("0/3", "4/3", "x", "1-3"):
        result = CliRunner().invoke(cli, ["sweep", "--shard", bad, "--dry-run"])
        assert result.exit_code == 2 and "--shard" in result.stderr


def test_seeds_repeat_every_combination_and_name_their_runs(tmp_path):
    args = [
        "sweep",
        *GRID,
        *TINY,
        "--seeds",
        "3,1,3",
        "--project",
        str(tmp_path),
        "--dry-run",
        "--format",
        "json",
    ]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 16  # 8 combinations x 2 seeds (3 given twice)
    assert [(r["run"], r["seed"]) for r in rows[:2]] == [
        ("convnext_tiny-d0-u0-s3", 3),
        ("convnext_tiny-d0-u0-s1", 1),
    ]
    # Without --seeds, the names and sweep.json's grid are as before sweeps had seeds.
    plain = json.loads(invoke("sweep", *GRID, *TINY, "--seed", "4", "--dry-run", "--format", "json").stdout)
    assert plain[0]["run"] == "convnext_tiny-d0-u0" and plain[0]["seed"] == 4


def test_seeds_and_seed_together_or_no_seeds_are_usage_errors(tmp_path):
    for extra in (["--seeds", "0,1", "--seed", "2"], ["--seeds", ","], ["--seeds", "0,x"]):
        result = CliRunner().invoke(
            cli, ["sweep", *GRID, *TINY, "--project", str(tmp_path), "--dry-run", *extra]
        )
        assert result.exit_code == 2, (extra, result.output)
        assert "Traceback" not in result.output
    assert "not both" in CliRunner().invoke(cli, ["sweep", "--seeds", "0", "--seed", "1", "--dry-run"]).output


def test_a_sweep_over_seeds_trains_each_reports_the_seed_and_names_the_ensemble(tmp_path):
    from scenecls.training import sweep as sweeps

    data = write_class_folders(tmp_path / "data" / "train", 8, size=32).parent
    write_class_folders(data / "test", 2, seed=3, size=32)
    project = tmp_path / "runs"
    args = ["sweep", "--backbones", "mobilenet_v2", "--unfreeze", "0", "--dense", "0,1", *TINY,
            "--seeds", "0,1", "--data", str(data), "--project", str(project), "--format", "json"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    sweep = project / "sweep"
    rows = json.loads(result.stdout)
    assert sorted((r["run"], r["seed"]) for r in rows) == [
        ("mobilenet_v2-d0-u0-s0", 0), ("mobilenet_v2-d0-u0-s1", 1), ("mobilenet_v2-d1-u0-s0", 0),
        ("mobilenet_v2-d1-u0-s1", 1),
    ]  # fmt: skip
    for row in rows:  # each run trained with its own seed: its own validation split
        assert json.loads((sweep / row["run"] / "config.json").read_text())["seed"] == row["seed"]
    table = list(csv.DictReader(io.StringIO((sweep / "results.csv").read_text())))
    assert {r["seed"] for r in table} == {"0", "1"}
    with Image.open(sweep / "heatmap_mobilenet_v2.png") as image:
        assert image.format == "PNG"
    # The command it prints for each recipe's seeds makes the ensemble.
    line = next(x for x in result.stderr.splitlines() if "mobilenet_v2-d1-u0's 2 seeds" in x)
    command = line.split("scenecls ", 1)[1].split()
    assert command[:3] == [
        "ensemble",
        str(sweep / "mobilenet_v2-d1-u0-s0"),
        str(sweep / "mobilenet_v2-d1-u0-s1"),
    ]
    made = invoke(*command[: command.index("(or")], "--no-export", "--format", "json")
    assert made.exit_code == 0, made.output
    ensemble = sweep / "mobilenet_v2-d1-u0-ensemble"
    assert (ensemble / "best.keras").is_file()
    # Collecting again under the same seeds finds the grid, and lists the ensemble after the runs, with
    # its test accuracy only; under other seeds it is another grid.
    collected = invoke(*args, "--collect")
    assert collected.exit_code == 0, collected.output
    rows = json.loads(collected.stdout)
    assert [r["run"] for r in rows][-1] == ensemble.name and len(rows) == 5
    assert rows[-1]["best_val_accuracy"] is None and rows[-1]["seed"] is None
    assert rows[-1]["test_accuracy"] == json.loads((ensemble / "metrics.json").read_text())["test_accuracy"]
    other = CliRunner().invoke(cli, [*args[:-2], "--seeds", "0,2", "--collect"])
    assert other.exit_code == 2 and "--seeds" in other.output
    assert sweeps.seed_groups(sweeps.grid(["mobilenet_v2"], ["0"], [0], None)) == {}

    # --ensemble makes the one still missing, keeps the one made, and lists both.
    before = (ensemble / "metrics.json").stat().st_mtime_ns
    joined = invoke(*args, "--ensemble")
    assert joined.exit_code == 0, joined.output
    assert joined.stderr.count("finished earlier, skipped") == 4
    assert (ensemble / "metrics.json").stat().st_mtime_ns == before
    rows = json.loads(joined.stdout)
    assert sorted(r["run"] for r in rows[-2:]) == ["mobilenet_v2-d0-u0-ensemble", ensemble.name]
    assert json.loads((sweep / "results.json").read_text()) == rows
    config = json.loads((sweep / "mobilenet_v2-d0-u0-ensemble" / "config.json").read_text())
    assert config["ensemble"]["seeds"] == [0, 1]


def test_ensemble_needs_seeds_and_every_shard(tmp_path):
    for extra in (
        ["--ensemble"],
        ["--ensemble", "--seeds", "0"],
        ["--ensemble", "--seeds", "0,1", "--shard", "1/2"],
    ):
        result = CliRunner().invoke(cli, ["sweep", *GRID, *TINY, "--project", str(tmp_path), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert "Traceback" not in result.output
