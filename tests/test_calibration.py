"""Calibrated confidence: temperature scaling fitted at the end of a run (and by ``scenecls calibrate``),
kept in the model; its scores; ``predict --min-confidence`` answering unknown; the two plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecls.calibration import (
    brier_score,
    calibration_scores,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    risk_coverage,
    with_temperature,
)
from scenecls.cli import cli
from tests.conftest import invoke, one_error_line, tiny, write_class_folders, write_train_test

TINY = tiny("--dense", "1", "--epochs", "3", "--finetune-epochs", "1", "--unfreeze", "1")


def _overconfident(n: int = 4000, k: int = 5, factor: float = 3.0, seed: int = 0):
    """Labels drawn from known probabilities, and those probabilities sharpened ``factor`` times (a
    model that is over-confident by a temperature of ``factor``)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    honest = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in honest])
    return with_temperature(honest, 1 / factor), labels


def test_the_fitted_temperature_undoes_a_known_over_confidence_without_changing_a_class():
    sharp, labels = _overconfident(factor=3.0)
    temperature = fit_temperature(sharp, labels)
    assert 2.8 < temperature < 3.2
    mended = with_temperature(sharp, temperature)
    assert np.array_equal(mended.argmax(axis=1), sharp.argmax(axis=1))
    before, after = calibration_scores(sharp, labels), calibration_scores(mended, labels)
    assert (
        after["ece"] < before["ece"] / 5 and after["nll"] < before["nll"] and after["brier"] < before["brier"]
    )
    # An honest model is left about as it is; an under-confident one is sharpened.
    honest, labels = _overconfident(factor=1.0, seed=1)
    assert 0.9 < fit_temperature(honest, labels) < 1.1
    timid, labels = _overconfident(factor=0.5, seed=2)
    assert 0.45 < fit_temperature(timid, labels) < 0.55
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0)) == 1.0


def test_the_scores_by_hand():
    # Four images all at confidence 0.9, two of them right: one bin, |0.5 - 0.9| = 0.4.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    labels = np.array([0, 1, 1, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    assert negative_log_likelihood(probs, labels) == pytest.approx(-(np.log(0.9) + np.log(0.1)) / 2)
    # Brier: a right answer at 0.9 costs 2 x 0.1^2, a wrong one 2 x 0.9^2.
    assert brier_score(probs, labels) == pytest.approx((2 * 0.01 + 2 * 0.81) / 2)
    rows = risk_coverage(np.array([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7]]), np.array([0, 1, 1]), (0.5, 0.9))
    assert rows[0] == {"min_confidence": 0.5, "coverage": 1.0, "accuracy": pytest.approx(2 / 3)}
    assert rows[1] == {"min_confidence": 0.9, "coverage": pytest.approx(1 / 3), "accuracy": 1.0}


def test_the_temperature_lives_in_the_model_weights_and_keeps_every_class(tmp_path):
    from scenecls.classifier import build_classifier, load_model, save_model, scale_logits
    from scenecls.heads import HeadConfig

    model = build_classifier("mobilenet_v2", 3, size=32, weights=None, head=HeadConfig(dense=1, units=8))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(16, 32, 32, 3)).astype(np.float32)
    layer = model.get_layer("predictions")  # random logits of some size: a fresh head gives ~uniform ones
    kernel, bias = layer.get_weights()
    layer.set_weights([rng.normal(size=kernel.shape) * 50, rng.normal(size=bias.shape) * 0.1])
    before = model.predict(images, verbose=0)
    assert before.max(axis=1).min() < 0.9
    scale_logits(model, 0.05)  # sharpen a lot, so that the change is far beyond float noise
    save_model(model, tmp_path / "m.keras")
    after = load_model(tmp_path / "m.keras").predict(images, verbose=0)
    np.testing.assert_allclose(after, with_temperature(before, 0.05), atol=1e-4)
    assert np.array_equal(after.argmax(axis=1), before.argmax(axis=1))
    assert after.max(axis=1).mean() > before.max(axis=1).mean()


@pytest.fixture(scope="module", autouse=True)
def always_fit():
    """These tests follow a fitted temperature through a run's files (the model, metrics.json, evaluate,
    calibrate, predict); their runs have far fewer validation images than a temperature is fitted on,
    so here every fit is applied. Whether to apply one is tested in test_calibration_judged.py."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            "scenecls.training.calibrate.judge_temperature", lambda probs, labels, fitted: (None, "")
        )
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("calibration")
    data = root / "data"
    write_train_test(data, 14, 6)
    project = root / "runs"
    result = invoke("train", "--data", str(data), *TINY, "--project", str(project), "--name", "run")
    assert result.exit_code == 0, result.output
    assert "Calibrated on" in result.stderr
    return project / "run", data


def test_a_run_ends_calibrated_and_says_so_in_its_metrics(run):
    run_dir, _ = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert metrics["temperature"] == calibration["temperature"] > 0
    assert calibration["fitted_on"] == "val" and calibration["bins"] == 15 and calibration["images"] > 0
    # on the validation rows the fine-tuning phase trained against (the same temperature as on the
    # images: see test_calibrating_again_keeps_the_classes_and_the_temperature)
    assert calibration["read_from"] == "cache"
    for split in ("val", "test"):
        assert (
            set(calibration[split]["before"]) == set(calibration[split]["after"]) == {"ece", "nll", "brier"}
        )
    # Fitted to minimise the validation NLL, and T = 1 (the model as trained) is among the candidates.
    assert calibration["val"]["after"]["nll"] <= calibration["val"]["before"]["nll"] + 1e-9
    # The test accuracy in metrics.json is the calibrated best.keras's, as evaluate measures it.
    evaluation = json.loads(invoke("evaluate", str(run_dir), "--format", "json").stdout)
    assert evaluation["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert evaluation["calibration"]["temperature"] == pytest.approx(metrics["temperature"])
    assert evaluation["calibration"]["ece"] == pytest.approx(calibration["test"]["after"]["ece"], abs=1e-6)
    assert evaluation["calibration"]["before"]["ece"] == pytest.approx(
        calibration["test"]["before"]["ece"], abs=1e-6
    )
    assert [row["min_confidence"] for row in evaluation["coverage"]] == [0.5, 0.7, 0.8, 0.9, 0.95]
    table = invoke("evaluate", str(run_dir)).stdout
    assert "expected calibration error" in table and "Accuracy against coverage" in table


def test_a_temperature_that_cannot_be_written_in_place_saves_the_whole_model(run, tmp_path, monkeypatch):
    """When the last layer's arrays are not found in the file, calibrate saves the model again, loaded
    with its optimizer: the file keeps the optimizer's state and gives the calibrated probabilities."""
    import shutil

    from scenecls.classifier import load_model

    run_dir, data = run
    copy = Path(shutil.copytree(run_dir, tmp_path / "copy"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32)), np.float32)
                       for p in sorted((data / "test").rglob("*.jpg"))[:6]])  # fmt: skip
    before = load_model(copy / "best.keras").predict(images, verbose=0)
    temperature = json.loads((copy / "metrics.json").read_text())["temperature"]
    monkeypatch.setattr("scenecls.training.calibrate.rewrite_weights", lambda *args: False)
    monkeypatch.setattr("scenecls.training.calibrate.fit_temperature", lambda probs, labels: 2 * temperature)
    result = invoke("calibrate", str(copy), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["temperature"] == pytest.approx(2 * temperature)
    saved = load_model(copy / "best.keras", compile=True)
    assert saved.optimizer.built and len(saved.optimizer.variables) > 2  # the state as trained
    after = saved.predict(images, verbose=0)
    assert np.abs(after - before).max() > 1e-5  # a tiny run's probabilities are close to even: scaled
    np.testing.assert_allclose(after, with_temperature(before, 2.0), atol=2e-6)


def test_calibrating_again_keeps_the_classes_and_the_temperature(run):
    run_dir, _ = run
    before = json.loads(invoke("predict", str(run_dir.parent.parent / "data" / "test"), "--model",
                               str(run_dir), "--top-k", "3", "--format", "json").stdout)  # fmt: skip
    temperature = json.loads((run_dir / "metrics.json").read_text())["temperature"]
    result = invoke("calibrate", str(run_dir), "--format", "json")
    assert result.exit_code == 0, result.output
    [record] = json.loads(result.stdout)
    # The model holds its temperature: fitted again on the same images, it is the same one.
    assert record["temperature"] == pytest.approx(temperature, rel=1e-3)
    after = json.loads(invoke("predict", str(run_dir.parent.parent / "data" / "test"), "--model",
                              str(run_dir), "--top-k", "3", "--format", "json").stdout)  # fmt: skip
    assert [p["label"] for p in after] == [p["label"] for p in before]
    np.testing.assert_allclose([p["confidence"] for p in after], [p["confidence"] for p in before], atol=1e-3)


def test_min_confidence_answers_unknown_with_the_best_guess_kept(run):
    run_dir, data = run
    images = str(data / "test")
    plain = json.loads(invoke("predict", images, "--model", str(run_dir), "--format", "json").stdout)
    assert "unknown" not in plain[0]  # without a floor, the output is as it was
    everything = json.loads(
        invoke("predict", images, "--model", str(run_dir), "--min-confidence", "1", "--format", "json").stdout
    )
    assert all(p["label"] == "unknown" and p["unknown"] for p in everything)
    assert [p["best_guess"] for p in everything] == [p["label"] for p in plain]
    nothing = json.loads(
        invoke("predict", images, "--model", str(run_dir), "--min-confidence", "0", "--format", "json").stdout
    )
    assert [p["label"] for p in nothing] == [p["label"] for p in plain] and not any(
        p["unknown"] for p in nothing
    )
    # In CSV, its own columns; a file that cannot be read keeps the row's width.
    floor = sorted(p["confidence"] for p in plain)[len(plain) // 2]
    result = invoke("predict", images, str(data / "missing.jpg"), "--model", str(run_dir),
                    "--min-confidence", str(floor), "--format", "csv")  # fmt: skip
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["path", "label", "confidence", "error", "unknown", "best_guess"]
    assert all(len(row) == 6 for row in rows)
    body = {row[0]: row for row in rows[1:]}
    assert body[str(data / "missing.jpg")][4:] == ["", ""]
    answered = [row for row in rows[1:] if row[4] == "false"]
    # (the CSV's confidence is rounded to 4 places)
    assert answered and all(float(row[2]) >= floor - 1e-4 and row[1] == row[5] for row in answered)
    assert all(row[1] == "unknown" and float(row[2]) <= floor + 1e-4 for row in rows[1:] if row[4] == "true")


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_min_confidence_out_of_range_is_a_usage_error(run, value):
    run_dir, data = run
    result = CliRunner().invoke(
        cli, ["predict", str(data), "--model", str(run_dir), "--min-confidence", value]
    )
    assert result.exit_code == 2 and "--min-confidence" in result.output


def test_plot_draws_the_reliability_diagram_and_the_coverage_curve(run):
    from PIL import Image

    run_dir, _ = run
    result = invoke("plot", str(run_dir), "--format", "json")
    written = [Path(p) for p in json.loads(result.stdout)]
    for name in ("reliability.png", "risk_coverage.png"):
        assert run_dir / name in written
        with Image.open(run_dir / name) as picture:
            assert picture.size[0] > 300 and len(set(picture.convert("L").getdata())) > 10  # drawn, not blank


def test_without_validation_images_there_is_nothing_to_fit(tmp_path):
    data = write_class_folders(tmp_path / "data", 8, size=40)
    project = tmp_path / "runs"
    result = invoke("train", "--data", str(data), *TINY, "--val-split", "0", "--project", str(project))
    assert result.exit_code == 0, result.output
    assert "no temperature to fit" in result.stderr
    metrics = json.loads((project / "train" / "metrics.json").read_text())
    assert metrics["temperature"] == 1.0 and metrics["calibration"]["fitted_on"] is None
    refused = CliRunner().invoke(cli, ["calibrate", str(project / "train")])
    assert refused.exit_code == 2
    assert "--val-split 0" in one_error_line(refused)


@pytest.mark.slow  # trains a run end to end
def test_a_class_named_unknown_is_warned_at_training_and_kept_apart_from_abstentions(tmp_path):
    data = write_class_folders(tmp_path / "data", 6, seed=3, size=40, classes=("alpha", "unknown"))
    project = tmp_path / "runs"
    trained = invoke("train", "--data", str(data), *TINY, "--val-split", "0.3", "--project", str(project),
                     "--name", "run")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "a class is named 'unknown'" in trained.stderr
    images, model = str(data / "unknown"), str(project / "run")
    never = invoke("predict", images, "--model", model, "--min-confidence", "0", "--format", "csv")
    assert "a class named 'unknown'" in never.stderr
    rows = list(csv.DictReader(io.StringIO(never.stdout)))
    # The model's own class "unknown" is an answer (unknown=false); an abstention says true.
    assert {row["unknown"] for row in rows} == {"false"}
    assert all(row["label"] == row["best_guess"] for row in rows)
    always = invoke("predict", images, "--model", model, "--min-confidence", "1", "--format", "csv")
    assert {row["unknown"] for row in csv.DictReader(io.StringIO(always.stdout))} == {"true"}


def test_the_cached_validation_rows_give_the_models_probabilities_for_their_own_weights_only(tmp_path):
    """What the end of a run fits the temperature on: the model's probabilities from the validation rows
    its last phase cached (the images' features; their activations at the cut as float16), for the model
    it is given; none when the layers those rows came from hold other weights."""
    import keras

    from scenecls.caches import activations, features
    from scenecls.caches.store import CacheInputs
    from scenecls.classifier import build_classifier, find_backbone
    from scenecls.data.augment import NO_AUGMENTATION
    from scenecls.data.pipeline import make_dataset, prepare_data
    from scenecls.heads import HeadConfig
    from scenecls.metrics import predict_split
    from scenecls.models.registry import get_spec
    from scenecls.training.sources import CutPointSource, FeatureSource
    from scenecls.unfreeze import UnfreezePolicy
    from tests.test_folding import _randomise_statistics

    data = prepare_data(write_class_folders(tmp_path / "data", 6, size=40), val_split=0.25, seed=0)
    keras.utils.set_random_seed(0)
    # ResNet50V2, not MobileNetV2: with random weights its features still differ from image to image
    model = build_classifier("resnet50_v2", 3, size=32, weights="none", head=HeadConfig(dense=0))
    _randomise_statistics(model)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    inner = find_backbone(model)
    index = activations.cut_index(get_spec("resnet50_v2").block_map(inner), UnfreezePolicy("blocks", 2))
    cut = activations.split_classifier(model, inner, index)
    inputs = CacheInputs(data.train, data.val, (32, 32), 4, NO_AUGMENTATION, 0, seed=0)
    cached_features = features.load_or_compute(model, inner, inputs, cache_root=tmp_path)
    on_features = FeatureSource(model, cached_features, batch_size=4, seed=0)
    entry = activations.load_or_build(cut, inner, inputs, cache_root=tmp_path)
    on_activations = CutPointSource(model, cut, entry, batch_size=4, seed=0)
    # logits spread over the images (the caches hold what lies below the head: they stay as they are)
    rows = np.asarray(cached_features.val)
    kernel = np.random.default_rng(0).normal(size=(rows.shape[1], 3))
    kernel *= 2 / ((rows - rows.mean(axis=0)) @ kernel).std()
    model.get_layer("predictions").set_weights([kernel, -rows.mean(axis=0) @ kernel])
    other = keras.models.clone_model(model)  # as the best model read back: the same weights, another object
    other.set_weights(model.get_weights())
    images = np.concatenate([x for x, _ in make_dataset(data.val, (32, 32), 4)])
    exact = np.asarray(cut.lower(images, training=False))
    # the entry holds them as float16 at its scale, from the lower part with batch normalisation folded
    held_rows = entry.read(entry.val)
    assert held_rows.shape == exact.shape
    assert np.abs(held_rows - exact).max() <= 2e-3 * np.abs(exact).max()

    def expected(which, activations_at_cut):
        upper = activations.split_classifier(which, find_backbone(which), index).upper
        return np.asarray(upper(activations_at_cut, training=False))

    on_images = predict_split(model, data.val, 4)
    assert np.ptp(on_images, axis=0).max() > 0.5
    # The whole model and its two halves, or the cached features and the images, go through different
    # kernels: oneDNN picks them by the CPU's instruction set, and on a CPU without AVX-512 the sums
    # differ by up to 3e-5. The same layers on the same rows agree to 1e-5.
    across = 1e-4
    np.testing.assert_allclose(expected(model, exact), on_images, atol=across)
    for which in (model, other):
        np.testing.assert_allclose(on_features.val_probabilities(which), on_images, atol=across)
        held = on_activations.val_probabilities(which)
        np.testing.assert_allclose(held, expected(which, held_rows), atol=1e-5)

    head = other.get_layer("predictions")  # the head changed: its own probabilities, from the same rows
    head.set_weights([w * 1.5 for w in head.get_weights()])
    changed = predict_split(other, data.val, 4)
    assert np.abs(changed - on_images).max() > 0.05
    np.testing.assert_allclose(on_features.val_probabilities(other), changed, atol=across)
    np.testing.assert_allclose(on_activations.val_probabilities(other), expected(other, held_rows), atol=1e-5)

    lowest = next(layer for layer in cut.lower_layers if layer.weights)  # below the cut: other rows
    mine = find_backbone(other).get_layer(lowest.name)
    mine.set_weights([w * 1.01 for w in mine.get_weights()])
    assert on_activations.val_probabilities(other) is None
    assert on_features.val_probabilities(other) is None
