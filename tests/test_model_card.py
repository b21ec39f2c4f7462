"""The model card: written by every finished run and every export from the run's record, its figures the
ones measured, its loading examples runnable as printed, and never written over a file of the user's."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scenecls.model_card import MARK, card_facts, render, write_run_card
from tests.conftest import invoke

pytestmark = pytest.mark.slow  # trains a model


@pytest.fixture(scope="module")
def run(finished_run) -> Path:
    return finished_run


def _test_images(run: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = json.loads((run / "labels.json").read_text())["classes"]
    test = Path(json.loads((run / "config.json").read_text())["data"]) / "test"
    paths = sorted(test.rglob("*.jpg"))
    return paths, [classes.index(p.parent.name) for p in paths], classes


def test_a_finished_run_has_a_card_whose_figures_are_its_own(run):
    card, facts = (run / "MODEL_CARD.md").read_text(), json.loads((run / "model_card.json").read_text())
    assert card.startswith(MARK) and facts["written_by"] == "scenecls"
    paths, labels, classes = _test_images(run)
    assert facts["classes"] == classes and facts["input"]["height"] == 32
    assert facts["backbone"] == "mobilenet_v2" and facts["weights"].startswith("none")

    # Each class's accuracy, measured here from the model's own predictions on the test images.
    predicted = invoke(
        "-q", "predict", *map(str, paths), "--model", str(run / "best.keras"), "--format", "json"
    )
    answers = [classes.index(row["label"]) for row in json.loads(predicted.stdout)]
    truth, guess = np.asarray(labels), np.asarray(answers)
    for row in facts["test"]["per_class"]:
        mine = truth == classes.index(row["class"])
        assert row["images"] == int(mine.sum()) == 5
        assert row["accuracy"] == pytest.approx(float((guess[mine] == truth[mine]).mean()))
        assert f"| {row['class']} | {row['accuracy']:.1%} |" in card
    assert facts["test"]["accuracy"] == pytest.approx(float((guess == truth).mean()))
    metrics = json.loads((run / "metrics.json").read_text())
    assert facts["calibration"]["temperature"] == metrics["temperature"]
    for cell in facts["test"]["confusions"]:
        assert (
            int(((truth == classes.index(cell["true"])) & (guess == classes.index(cell["predicted"]))).sum())
            == (cell["images"])
        )
        assert f"{cell['true']} is taken for {cell['predicted']} in {cell['images']} of 5" in card
    assert "backbone started from random weights" in card
    assert "best.tflite" in card and str(run.parent) not in card  # no path of this machine


def test_the_card_s_loading_examples_run_as_printed_and_agree_with_predict(run, tmp_path):
    card = (run / "MODEL_CARD.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(blocks) == 3  # the pixels, Keras 3, LiteRT
    photo = _test_images(run)[0][-1]
    shutil.copy(photo, run / "photo.jpg")
    try:
        script = "\n".join(blocks).replace("probabilities =", "results.append(")
        script = re.sub(r"(results\.append\(.*)", r"\1)", script)
        code = "results = []\n" + script + "\nimport json; print(json.dumps([r.tolist() for r in results]))"
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=run, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        keras_probs, litert_probs = (np.asarray(r) for r in json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        (run / "photo.jpg").unlink()
    expected = json.loads(invoke("-q", "predict", str(photo), "--model", str(run), "--format", "json").stdout)
    classes = _test_images(run)[2]
    assert classes[int(keras_probs.argmax())] == classes[int(litert_probs.argmax())] == expected[0]["label"]
    np.testing.assert_allclose(keras_probs, litert_probs, atol=1e-4)


def test_calibrate_and_evaluate_refresh_the_card(run, tmp_path):
    run = Path(shutil.copytree(run, tmp_path / run.name))  # the shared run stays as trained
    (run / "model_card.json").write_text(json.dumps({"written_by": "scenecls", "stale": True}))
    assert invoke("-q", "calibrate", str(run)).exit_code == 0
    facts = json.loads((run / "model_card.json").read_text())
    assert "stale" not in facts
    assert (
        facts["calibration"]["temperature"] == json.loads((run / "metrics.json").read_text())["temperature"]
    )
    assert facts["test"]["source"] == "the run's final test"
    assert invoke("-q", "evaluate", str(run)).exit_code == 0
    assert json.loads((run / "model_card.json").read_text())["test"]["source"] == "scenecls evaluate"


def test_a_card_the_user_wrote_is_never_replaced_nor_written_through(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    mine = "# My notes on this model\n"
    (copy / "MODEL_CARD.md").write_text(mine)
    assert write_run_card(copy) is None
    assert (copy / "MODEL_CARD.md").read_text() == mine
    elsewhere = tmp_path / "elsewhere.md"
    elsewhere.write_text(mine)
    (copy / "MODEL_CARD.md").unlink()
    (copy / "MODEL_CARD.md").symlink_to(elsewhere)
    assert write_run_card(copy) is None and elsewhere.read_text() == mine


def test_an_export_elsewhere_gets_its_card_and_a_foreign_card_is_left(run, tmp_path):
    dist = tmp_path / "dist"
    result = invoke(
        "-q", "export", str(run), "--to", "onnx", "--output", str(dist / "scenes.onnx"), "--format", "json"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["card"] == str(dist / "MODEL_CARD.md")
    card = (dist / "MODEL_CARD.md").read_text()
    assert "session = onnxruntime.InferenceSession('scenes.onnx')" in card and "keras.saving" not in card
    metadata = json.loads((dist / "scenes.onnx.json").read_text())
    assert metadata["card"]["export_check"]["top1_agreement"] == summary["parity"]["top1_agreement"]
    assert (
        metadata["card"]["test"]["accuracy"]
        == json.loads((run / "metrics.json").read_text())["test_accuracy"]
    )

    other = tmp_path / "other"
    other.mkdir()
    (other / "MODEL_CARD.md").write_text("not ours\n")
    result = invoke("export", str(run), "--to", "onnx", "--output", str(other / "m.onnx"), "--parity", "0")
    assert result.exit_code == 0 and "is not one scenecls wrote" in result.stderr
    assert (other / "MODEL_CARD.md").read_text() == "not ours\n"
    assert "card" in json.loads((other / "m.onnx.json").read_text())


def test_a_model_without_a_run_says_nothing_was_measured():
    facts = card_facts(None, classes=["a", "b"], input_size=(64, 64))
    card = render(facts, files={"keras": "model.keras"})
    assert "Not measured on held-out test images (no run record)" in card
    assert "Not known: this model was not exported from a run folder." in card
    assert "keras.saving.load_model('model.keras')" in card and "%" not in card.split("## How")[0]
