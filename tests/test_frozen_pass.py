"""Frozen passes (the caches' builds) on LiteRT where it is faster: TensorFlow's outputs to float
rounding, the same outputs every time, and TensorFlow wherever LiteRT cannot run the model."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from scenecls import frozen_pass
from scenecls.classifier import build_classifier, inference_function
from scenecls.models import registry
from scenecls.models.folding import for_inference
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


def _litert_from(monkeypatch, backbone: str, images: int | None) -> None:
    """The registered spec of ``backbone`` with another threshold, for this test only."""
    spec = registry.get_spec(backbone)
    monkeypatch.setitem(registry._REGISTRY, backbone, dataclasses.replace(spec, litert_from_images=images))


def test_litert_gives_tensorflows_outputs_and_repeats_itself(model, images):
    forward = frozen_pass.litert_function(model, 4)
    assert forward is not None
    expected = np.asarray(model(images, training=False))
    got = forward(images)  # a whole batch of 4, then 2 padded to 4
    assert got.shape == expected.shape == (6, 6) and got.dtype == np.float32
    assert np.ptp(expected, axis=0).max() > 0.01  # the images give different features
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert np.array_equal(forward(images), got)
    assert np.array_equal(forward(images[4:]), got[4:])  # a batch alone gives what it gave among others
    assert np.array_equal(forward(images[:4]), got[:4])


def test_the_backbones_spec_says_from_how_many_images(model, images, monkeypatch):
    _litert_from(monkeypatch, "mobilenet_v2", 8)
    on_litert = frozen_pass.litert_function(for_inference(model, images=8), 4)(images)
    more = frozen_pass.frozen_forward(model, 4, images=8, backbone="mobilenet_v2")(images)
    assert np.array_equal(more, on_litert)
    on_tensorflow = inference_function(for_inference(model, images=7), 4, images=7)(images)
    fewer = frozen_pass.frozen_forward(model, 4, images=7, backbone="mobilenet_v2")(images)
    assert np.array_equal(fewer, on_tensorflow)
    assert not np.array_equal(on_litert, on_tensorflow)  # two runtimes, told apart by their last bits
    tolerance = 1e-5 * np.abs(on_tensorflow).max()
    for other in (None, "xception", "inception_resnet_v2", "resnet50_v2"):  # as fast on TensorFlow
        assert frozen_pass.litert_threshold(other) is None
        forward = frozen_pass.frozen_forward(model, 4, images=10**6, backbone=other)
        assert not np.array_equal(forward(images), on_litert)
        assert np.allclose(forward(images), on_tensorflow, rtol=1e-4, atol=tolerance)


def test_without_litert_the_pass_runs_on_tensorflow(model, images, monkeypatch):
    _litert_from(monkeypatch, "mobilenet_v2", 1)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # as where LiteRT has no wheels
    assert frozen_pass.litert_function(model, 4) is None
    forward = frozen_pass.frozen_forward(model, 4, images=6, backbone="mobilenet_v2")
    assert np.array_equal(forward(images), inference_function(model, 4, images=6)(images))


def test_an_operation_litert_lacks_leaves_the_model_to_tensorflow():
    import keras
    import tensorflow as tf

    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Lambda(tf.math.lgamma)(keras.layers.Dense(4)(inputs)))
    assert frozen_pass.litert_function(model, 4) is None
    x = np.random.default_rng(2).uniform(0.5, 2, (5, 8)).astype(np.float32)
    got = frozen_pass.frozen_forward(model, 4, images=5, backbone=None)(x)
    assert np.allclose(got, np.asarray(model(x)), rtol=1e-5)


def test_a_model_in_mixed_precision_stays_on_tensorflow():
    import keras

    float32 = build_classifier("mobilenet_v2", 3, size=32, weights="none")
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = build_classifier("mobilenet_v2", 3, size=32, weights="none")
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert mixed.compute_dtype == "bfloat16"
    assert frozen_pass.litert_function(mixed, 4) is None
    assert frozen_pass.litert_function(float32, 4) is not None


def test_a_run_knows_its_backbone_by_its_registered_name(model):
    classifier = build_classifier("mobilenet_v2", 3, size=32, weights="none")
    assert frozen_pass.registered_backbone(classifier) == "mobilenet_v2"
    assert frozen_pass.registered_backbone(model) is None  # not made by scenecls: TensorFlow runs it
    for name in registry.backbone_names():  # none yet: see frozen_pass.py
        assert frozen_pass.litert_threshold(name) is None
