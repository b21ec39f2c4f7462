"""``scenecls ensemble``: finished runs averaged into one model, a run folder like any other.

Two tiny MobileNetV2 runs (random weights, 32x32 inputs) that differ only by their seed, on generated
images of three classes; the ensemble's outputs and test accuracy are checked against the members'
own predictions, computed here independently.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from scenecls import runs
from scenecls.classifier import load_model
from scenecls.cli import cli
from scenecls.data.layout import index_dataset
from scenecls.metrics import evaluate_predictions, predict_split
from tests.conftest import invoke, tiny, write_train_test

pytestmark = pytest.mark.slow  # trains several models: left out of the fast lane (-m "not slow")

# Head-only runs: what an ensemble does with its members does not depend on how they were trained.
TINY = tiny("--dense", "1", "--epochs", "2", "--finetune-epochs", "0")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project with two finished runs, ``seed0`` and ``seed1``, that differ only by their seed."""
    data = tmp_path_factory.mktemp("data")
    write_train_test(data, 14, 6)
    project = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        result = invoke("-q", "train", "--data", str(data), *TINY, "--seed", str(seed),
                        "--project", str(project), "--name", f"seed{seed}")  # fmt: skip
        assert result.exit_code == 0, result.output
    return project


@pytest.fixture(scope="module")
def made(project) -> dict:
    """``scenecls ensemble seed0 seed1``: the run ``ensemble``, with its best.tflite; its JSON summary."""
    result = invoke("-q", "ensemble", "seed0", "seed1", "--project", str(project), "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_ensemble_averages_its_members_probabilities(project, made):
    run = project / "ensemble"
    assert made["run_dir"] == str(run) and made["members"] == [str(project / "seed0"), str(project / "seed1")]
    members = [load_model(project / f"seed{seed}" / "best.keras") for seed in (0, 1)]
    ensemble = load_model(run / "best.keras")  # in safe mode, as every model
    images = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    expected = np.mean([m.predict(images, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict(images, verbose=0), expected, atol=1e-5)

    # The test accuracy it reports is that of the mean, and each member's is its own run's.
    config = json.loads((project / "seed0" / "config.json").read_text())
    test = index_dataset(Path(config["data"])).splits["test"]
    mean = np.mean([predict_split(m, test) for m in members], axis=0)
    accuracy = evaluate_predictions(mean, np.asarray(test.labels), config["classes"]).accuracy
    assert made["test_accuracy"] == pytest.approx(accuracy)
    assert made["test_images"] == len(test) == 18
    for seed, value in enumerate(made["member_test_accuracy"]):
        assert value == json.loads((project / f"seed{seed}" / "metrics.json").read_text())["test_accuracy"]

    saved = json.loads((run / "config.json").read_text())
    assert saved["ensemble"]["seeds"] == [0, 1] and saved["classes"] == config["classes"]
    assert saved["ensemble"]["members"] == [str((project / f"seed{seed}").resolve()) for seed in (0, 1)]
    assert json.loads((run / "state.json").read_text())["status"] == "finished"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_val_accuracy"] is None and metrics["export"]["top1_agreement"] >= 0.99


def test_evaluate_predict_and_plot_take_it_as_a_run(project, made):
    run = project / "ensemble"
    evaluated = invoke("-q", "evaluate", str(run), "--format", "json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(made["test_accuracy"])
    # The members' validation images trained one another (seeds 0 and 1): never a figure of it.
    refused = CliRunner().invoke(cli, ["evaluate", str(run), "--split", "val"])
    assert refused.exit_code == 2 and "different validation images (seeds 0, 1)" in refused.output

    config = json.loads((run / "config.json").read_text())
    paths = [str(p) for p in sorted((Path(config["data"]) / "test" / "alpha").iterdir())[:3]]
    predicted = invoke("-q", "predict", *paths, "--model", str(run), "--format", "json")
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)
    assert [r["path"] for r in rows] == paths and all(r["label"] in config["classes"] for r in rows)

    plotted = invoke("plot", str(run), "--project", str(project))
    assert plotted.exit_code == 0, plotted.output
    assert "is an ensemble: it has no training curves" in plotted.output
    assert (run / "confusion.png").is_file() and not (run / "curves.png").exists()


@pytest.mark.parametrize("command", [["finetune", "ensemble"], ["train", "--resume", "ensemble"],
                                     ["lr-find", "--run", "ensemble"]])  # fmt: skip
def test_what_trains_from_a_run_refuses_an_ensemble(project, made, command):
    result = CliRunner().invoke(cli, [*command, "--project", str(project)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].endswith("is an ensemble of runs, which does not train; "
                                                          "use one of its members")  # fmt: skip
    assert "Traceback" not in result.output


def test_members_that_do_not_fit_together_are_refused_before_anything_is_written(project, made, tmp_path):
    def refused(*names: str, at: Path = project) -> str:
        before = sorted(p.name for p in at.iterdir())
        result = CliRunner().invoke(cli, ["ensemble", *names, "--project", str(at)])
        assert result.exit_code == 2, result.output
        assert sorted(p.name for p in at.iterdir()) == before  # no new run folder
        return result.output

    assert "at least two runs" in refused("seed0")
    assert "named twice" in refused("seed0", str(project / "seed0"))
    assert "is an ensemble itself" in refused("ensemble", "seed0")

    # Copies of a member whose config says another input size, other classes, or an unfinished run.
    other = tmp_path / "other"
    other.mkdir()
    for name, change in (
        ("size", lambda c, s: c.update(image_size=48)),
        ("classes", lambda c, s: c.update(classes=["x", "y", "z"])),
        ("running", lambda c, s: s.update(status="running")),
    ):
        shutil.copytree(project / "seed1", other / name)
        config = runs.read_json(other / name / "config.json")
        state = runs.read_json(other / name / "state.json")
        change(config, state)
        runs.write_json(other / name / "config.json", config)
        runs.write_json(other / name / "state.json", state)
    shutil.copytree(project / "seed0", other / "seed0")
    assert "reads 48 px images and" in refused("seed0", "size", at=other)
    assert "predicts other classes (x, y, z)" in refused("seed0", "classes", at=other)
    assert "has not finished training" in refused("seed0", "running", at=other)


def test_a_failure_while_writing_leaves_no_half_made_run(project, made, monkeypatch):
    import scenecls.ensemble

    def broken(model, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(scenecls.ensemble, "save_model", broken)
    before = sorted(p.name for p in project.iterdir())
    result = CliRunner().invoke(cli, ["ensemble", "seed0", "seed1", "--project", str(project), "--name", "x"])
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert sorted(p.name for p in project.iterdir()) == before


def test_members_with_one_seed_share_a_validation_split():
    from scenecls.evaluation import _check_ensemble_split

    _check_ensemble_split({"ensemble": {"seeds": [3, 3]}}, "val")  # the same split: a fair figure
    _check_ensemble_split({"ensemble": {"seeds": [0, 1]}}, "test")
    _check_ensemble_split({}, "val")  # a trained run
    with pytest.raises(Exception, match="seeds 0, 1"):
        _check_ensemble_split({"ensemble": {"seeds": [0, 1]}}, "val")


def test_members_of_other_backbones_average_as_well(project, made):
    config = json.loads((project / "seed0" / "config.json").read_text())
    other = ["--backbone", "convnext_tiny", "--weights", "none", "--image-size", "32", "-b", "8",
             "--no-export", "--epochs", "1", "--finetune-epochs", "0", "--name", "cnx"]  # fmt: skip
    trained = invoke("-q", "train", "--data", config["data"], *other, "--project", str(project))
    assert trained.exit_code == 0, trained.output
    result = invoke("-q", "ensemble", "seed0", "cnx", "--project", str(project), "--name", "mixed",
                    "--no-export", "--format", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    run = project / "mixed"
    assert json.loads((run / "labels.json").read_text())["backbone"] == "convnext_tiny+mobilenet_v2"
    saved = json.loads((run / "config.json").read_text())
    assert saved["ensemble"]["backbones"] == ["mobilenet_v2", "convnext_tiny"]
    assert not (run / "best.tflite").exists()  # --no-export
    evaluated = invoke("-q", "evaluate", str(run), "--format", "json")
    tested = json.loads(result.stdout)["test_accuracy"]
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(tested)


def test_the_report_of_an_ensemble_shows_its_members_side_by_side_with_links(project, made):
    for seed in (0, 1):  # the members' own pages first, so that the ensemble's links to them
        assert invoke("-q", "report", str(project / f"seed{seed}"), "--no-heatmaps").exit_code == 0
    result = invoke("-q", "report", str(project / "ensemble"), "--no-heatmaps")
    assert result.exit_code == 0, result.output
    page = (project / "ensemble" / "report.html").read_text()
    assert "Members (2)" in page and "best epoch" not in page and ">None<" not in page
    for seed in (0, 1):
        assert f'<a href="../seed{seed}/report.html">report</a>' in page
        assert f"{made['member_test_accuracy'][seed]:.4f}" in page
