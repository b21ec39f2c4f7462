"""Frozen passes (the caches' builds) on LiteRT when asked: TensorFlow's outputs to float rounding, the
same outputs every time, and TensorFlow, said once, wherever LiteRT cannot run the model."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from scenecls import frozen_pass
from scenecls.classifier import build_classifier, inference_function
from scenecls.errors import UsageError
from scenecls.models.folding import for_inference
from tests.conftest import RecordingReporter
from tests.test_folding import _randomise_statistics, _small_model

pytest.importorskip("ai_edge_litert", reason="LiteRT has no wheels for this platform")


@pytest.fixture(scope="module")
def model():
    """Convolutions of every kind with batch norms far from the identity: outputs that differ from image
    to image (a random MobileNetV2's vanish within a few blocks)."""
    model = _small_model()
    _randomise_statistics(model)
    return model


@pytest.fixture
def images():
    return np.random.default_rng(1).uniform(0, 255, (6, 12, 12, 3)).astype(np.float32)


def test_litert_gives_tensorflows_outputs_and_repeats_itself(model, images):
    forward = frozen_pass.litert_function(model, 4)
    expected = np.asarray(model(images, training=False))
    got = forward(images)  # a whole batch of 4, then 2 padded to 4
    assert got.shape == expected.shape == (6, 6) and got.dtype == np.float32
    assert np.ptp(expected, axis=0).max() > 0.01  # the images give different features
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert np.array_equal(forward(images), got)
    assert np.array_equal(forward(images[4:]), got[4:])  # a batch alone gives what it gave among others
    assert np.array_equal(forward(images[:4]), got[:4])


def test_the_runtime_asked_for_runs_the_pass(model, images):
    on_litert = frozen_pass.litert_function(for_inference(model, images=8), 4)(images)
    asked = frozen_pass.frozen_forward(model, 4, images=8, runtime="litert")(images)
    assert np.array_equal(asked, on_litert)
    on_tensorflow = inference_function(for_inference(model, images=8), 4, images=8)(images)
    default = frozen_pass.frozen_forward(model, 4, images=8)(images)
    assert np.array_equal(default, on_tensorflow)
    named = frozen_pass.frozen_forward(model, 4, images=8, runtime="tensorflow")
    assert np.array_equal(named(images), default)
    assert not np.array_equal(on_litert, on_tensorflow)  # two runtimes, told apart by their last bits
    assert np.allclose(on_litert, on_tensorflow, rtol=1e-4, atol=1e-5 * np.abs(on_tensorflow).max())
    with pytest.raises(UsageError, match="cache runtime 'onnx' is not one of tensorflow, litert"):
        frozen_pass.frozen_forward(model, 4, images=8, runtime="onnx")


def _warned_afresh(monkeypatch) -> RecordingReporter:
    monkeypatch.setattr(frozen_pass, "_said", set())  # what earlier tests were told is not this one's
    return RecordingReporter()


def test_without_litert_the_pass_runs_on_tensorflow_and_says_so_once(model, images, monkeypatch):
    reporter = _warned_afresh(monkeypatch)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # as where LiteRT has no wheels
    with pytest.raises(frozen_pass.LiteRTUnavailable, match="pip install ai-edge-litert"):
        frozen_pass.litert_function(model, 4)
    for _ in range(2):  # the lower part and the pooling of one pass: one warning
        forward = frozen_pass.frozen_forward(model, 4, images=6, runtime="litert", reporter=reporter)
        assert np.array_equal(forward(images), inference_function(model, 4, images=6)(images))
    assert reporter.warnings == [
        "LiteRT is not installed (pip install ai-edge-litert): the caches' frozen passes run on TensorFlow"
    ]


def test_an_operation_litert_lacks_leaves_the_model_to_tensorflow(monkeypatch):
    import keras
    import tensorflow as tf

    reporter = _warned_afresh(monkeypatch)
    inputs = keras.Input((8,))
    outputs = keras.layers.Lambda(tf.math.lgamma)(keras.layers.Dense(4)(inputs))
    model = keras.Model(inputs, outputs, name="odd")
    with pytest.raises(frozen_pass.LiteRTUnavailable, match="LiteRT cannot run odd"):
        frozen_pass.litert_function(model, 4)
    x = np.random.default_rng(2).uniform(0.5, 2, (5, 8)).astype(np.float32)
    got = frozen_pass.frozen_forward(model, 4, images=5, runtime="litert", reporter=reporter)(x)
    assert np.allclose(got, np.asarray(model(x)), rtol=1e-5)
    assert len(reporter.warnings) == 1 and reporter.warnings[0].startswith("LiteRT cannot run odd: ")
    assert "\n" not in reporter.warnings[0]


def test_a_model_in_mixed_precision_stays_on_tensorflow():
    import keras

    float32 = build_classifier("mobilenet_v2", 3, size=32, weights="none")
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = build_classifier("mobilenet_v2", 3, size=32, weights="none")
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert mixed.compute_dtype == "bfloat16"
    with pytest.raises(frozen_pass.LiteRTUnavailable, match="mixed precision"):
        frozen_pass.litert_function(mixed, 4)
    assert frozen_pass.litert_function(float32, 4) is not None
