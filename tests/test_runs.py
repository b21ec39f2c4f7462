"""Run folders read back: damaged run files are one error naming the file and the field (a sweep's
collect reports a damaged run and goes on), and what a finished run is asked with bad input (a damaged
best.tflite, a file name that is not UTF-8) answers in one line or in strict JSON."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from scenecls import runs
from scenecls.training import sweep as sweeps
from tests.conftest import RecordingReporter, built_once, invoke, one_error_line, tiny, write_class_folders

TINY = tiny(export=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-phase run, trained once for every test worker: the tests copy it to damage it."""

    def build(root: Path) -> Path:
        data = write_class_folders(root / "data", 6, size=32)
        result = invoke(
            "train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "1", "--unfreeze", "1",
            "--project", str(root / "runs"), "--format", "json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return Path(json.loads(result.stdout)["run_dir"])

    return built_once(tmp_path_factory, "runs-finished", build)


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run, to damage."""
    copy = tmp_path / "runs" / "train"
    shutil.copytree(finished, copy)
    return copy


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([], "state.json is damaged: it holds a JSON list, not an object"),
        (
            {"status": "running", "phase": 1, "epoch": -3},
            "state.json is damaged: epoch must be a whole number",
        ),
        (
            {"status": "running", "phase": 7, "epoch": 1},
            "state.json is damaged: phase is 7, but the run has 2",
        ),
        ({"status": "resting"}, "state.json is damaged: status must be one of"),
    ],
)
def test_a_damaged_state_is_one_line_naming_the_field(run, state, message):
    (run / runs.STATE).write_text(json.dumps(state))
    result = invoke("train", "--resume", str(run))
    assert result.exit_code == 1
    assert message in one_error_line(result)


@pytest.fixture
def image(finished) -> Path:
    return next((finished.parent.parent / "data").rglob("*.jpg"))


def test_damaged_labels_are_one_line_naming_the_field(run, image):
    (run / runs.LABELS).write_text(json.dumps({"classes": 5}))
    result = invoke("predict", str(image), "--model", str(run), "--keras")
    assert result.exit_code == 1
    assert "labels.json is damaged: classes must be a list of class names" in one_error_line(result)


def test_collect_reports_a_damaged_run_and_goes_on(finished, tmp_path):
    points = [sweeps.GridPoint("mobilenet_v2", 0, "1"), sweeps.GridPoint("mobilenet_v2", 1, "1")]
    folder = tmp_path / "sweep"
    for point in points:
        shutil.copytree(finished, folder / point.name)
    (folder / points[0].name / runs.STATE).write_text("[]")
    reporter = RecordingReporter()

    rows = sweeps.collect_results(folder, points, reporter)
    assert [row["run"] for row in rows] == [points[1].name]
    assert reporter.warnings == [f"{points[0].name}: its state.json is damaged; left out of the tables"]
    assert sweeps.unfinished(folder, points) == [points[0].name]


def _loads_but_fails_to_run(model: bytes) -> bytes:
    """``model`` with one byte flipped such that LiteRT loads it and fails only when it runs (as fuzzed
    files did: "Invalid tensor index", "Input tensor 3 lacks data")."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    for offset in range(8, 20_000):
        damaged = bytearray(model)
        damaged[offset] ^= 0xFF
        try:
            interpreter = Interpreter(model_content=bytes(damaged))
            details = interpreter.get_input_details()[0]
        except Exception:
            continue
        try:
            interpreter.resize_tensor_input(details["index"], [1, *details["shape"][1:]])
            interpreter.allocate_tensors()
            interpreter.set_tensor(details["index"], np.zeros((1, *details["shape"][1:]), np.float32))
            interpreter.invoke()
        except Exception:
            return bytes(damaged)
    raise AssertionError("no single flipped byte gives a model that loads and then fails")


def test_a_tflite_that_loads_and_fails_to_run_is_one_line(run, image):
    from scenecls.checksums import checksum_path

    model = run / "best.tflite"
    model.write_bytes(_loads_but_fails_to_run(model.read_bytes()))
    checksum_path(model).unlink()  # a file from elsewhere, with no checksum: LiteRT's own check speaks
    result = invoke("predict", str(image), "--model", str(model))
    assert result.exit_code == 1
    assert f"{model} is damaged: LiteRT says" in one_error_line(result)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_json_output_escapes_a_file_name_that_is_not_utf8(finished, image, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    name = os.fsencode(folder) + b"/caf\xe9.jpg"
    with open(name, "wb") as handle:
        handle.write(image.read_bytes())
    result = invoke("predict", str(folder), "--model", str(finished), "--format", "json")
    assert result.exit_code == 0, result.output
    raw = result.stdout_bytes.decode("utf-8")  # strict UTF-8: no lone surrogate
    assert "\\udc" not in raw
    rows = json.loads(raw)
    assert rows[0]["path"].endswith("caf\\xe9.jpg") and rows[0]["label"]
