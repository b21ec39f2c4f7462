"""A run is bound to its own data: every command that reads a run's data finds it from any folder, refuses
another data set that happens to lie under the same relative name, and never rewrites the run's files on
other images. A check that fails before a resumed run starts leaves the run as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import invoke, one_error_line, tiny, write_class_folders

TINY = tiny()


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def bound(tmp_path_factory):
    """A finished run trained from folder ``here`` with ``--data data`` (relative) and an exclude list,
    and a folder ``elsewhere`` holding another ``data/`` with the same class names."""
    here = tmp_path_factory.mktemp("here")
    write_class_folders(here / "data" / "train", 10, seed=1, size=32)
    write_class_folders(here / "data" / "test", 4, seed=2, size=32)
    exclude = here / "exclude.txt"
    exclude.write_text("train/alpha/alpha_000.jpg\n")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    write_class_folders(elsewhere / "data" / "train", 3, seed=7, size=32)
    write_class_folders(elsewhere / "data" / "test", 2, seed=8, size=32)
    project = here / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(here)
        result = invoke("-q", "train", "--data", "data", "--exclude", "exclude.txt", *TINY, "--epochs", "1",
                        "--finetune-epochs", "1", "--unfreeze", "1", "--project", "runs")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert invoke("-q", "evaluate", "runs/train").exit_code == 0
    return {"run": project / "train", "here": here, "elsewhere": elsewhere, "exclude": exclude}


def test_the_run_records_where_its_data_is_from_anywhere_and_as_given(bound):
    config = json.loads((bound["run"] / "config.json").read_text())
    assert config["data"] == str(bound["here"] / "data")
    assert config["data_given"] == "data"
    assert config["data_identity"] and config["exclude"] == str(bound["exclude"])


def test_from_another_folder_the_run_finds_its_own_data(bound, monkeypatch):
    monkeypatch.chdir(bound["run"].parent.parent.parent)  # no data/ here at all
    result = invoke("-q", "evaluate", str(bound["run"]), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 12


@pytest.mark.parametrize("command", ["evaluate", "calibrate", "export"])
def test_a_same_named_data_set_elsewhere_is_refused_and_nothing_of_the_run_changes(
    bound, monkeypatch, command
):
    """The run's recorded data is moved away and another ``data/`` stands where a relative path would
    find it: refused in one line, and the run's results, model and metrics stay byte for byte."""
    run = bound["run"]
    config_file = run / "config.json"
    original = config_file.read_text()
    config = json.loads(original)
    # A run written by an older version recorded the path as given, relative to where it trained.
    config.update(data="data", data_identity=None)
    config_file.write_text(json.dumps(config))
    before = snapshot(run)
    monkeypatch.chdir(bound["elsewhere"])
    try:
        args = [command, str(run)] + (
            ["--output", str(bound["elsewhere"] / "out")] if command == "export" else []
        )
        result = invoke(*args)
        assert result.exit_code != 0
        line = one_error_line(result)
        assert "not the ones" in line and str(Path("data").absolute()) in line
        assert ("--data" in line) == (command != "calibrate")  # calibrate fits only on the run's own images
        assert snapshot(run) == before
    finally:
        config_file.write_text(original)


def test_evaluate_on_data_named_explicitly_saves_beside_the_run_results(bound, monkeypatch):
    run = bound["run"]
    before = {name: (run / name).read_bytes() for name in ("evaluation.json", "predictions.csv")}
    result = invoke(
        "-q", "evaluate", str(run), "--data", str(bound["elsewhere"] / "data"), "--format", "json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 6
    assert {name: (run / name).read_bytes() for name in before} == before
    beside = sorted(p.name for p in run.glob("evaluation.on-data-*.json"))
    assert (
        len(beside) == 1
        and (run / beside[0].replace("evaluation", "predictions").replace(".json", ".csv")).is_file()
    )
    assert json.loads((run / beside[0]).read_text())["images"] == 6


def test_the_run_folder_named_without_its_exclude_list_is_other_images(bound):
    """--data takes a data set whole: without the run's exclude list, its results are saved beside."""
    run = bound["run"]
    config = json.loads((run / "config.json").read_text())
    assert config["exclude"]  # so the whole folder is other images than the run's: saved beside
    result = invoke("-q", "evaluate", str(run), "--data", str(bound["here"] / "data"))
    assert result.exit_code == 0
    assert list(run.glob("evaluation.on-data-*.json"))


def test_extending_a_run_whose_exclude_list_is_gone_leaves_it_as_it_was(bound, tmp_path):
    run = bound["run"]
    exclude = bound["exclude"]
    before = snapshot(run)
    hidden = tmp_path / "exclude.txt"
    os.replace(exclude, hidden)
    try:
        result = invoke("train", "--resume", str(run), "--finetune-epochs", "2")
        assert result.exit_code != 0
        assert "no such file" in one_error_line(result)
        assert snapshot(run) == before
        assert json.loads((run / "state.json").read_text())["status"] == "finished"
    finally:
        os.replace(hidden, exclude)


def test_resuming_with_another_exclude_list_is_refused(bound, tmp_path):
    """The README's promise: the list's content changed under its name, so the run would go on with
    other images than it started with."""
    run, exclude = bound["run"], bound["exclude"]
    text = exclude.read_text()
    before = snapshot(run)
    exclude.write_text(text + "train/beta/beta_000.jpg\n")
    try:
        result = invoke("train", "--resume", str(run), "--finetune-epochs", "2")
        assert result.exit_code != 0
        assert "changed since it started" in one_error_line(result)
        assert snapshot(run) == before
    finally:
        exclude.write_text(text)
