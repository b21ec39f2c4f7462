"""Batch normalisation folded into the convolutions of frozen passes: same outputs, fewer layers."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from scenecls.models.folding import FOLD_FROM, fold_batchnorm, foldable_pairs, for_inference  # noqa: E402
from scenecls.models.registry import build_backbone, get_spec  # noqa: E402


def _randomise_statistics(model, seed: int = 0) -> None:
    """Batch normalisation far from the identity, so a wrong fold shows in the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomise_statistics(layer, seed)
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.5, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, layer.moving_variance.shape))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.3, layer.beta.shape))


def _batchnorms(model) -> int:
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            count += _batchnorms(layer)
        count += isinstance(layer, keras.layers.BatchNormalization)
    return count


def _small_model():
    """Every kind of pair, and the cases that must not fold."""
    layers = keras.layers
    inputs = keras.Input((12, 12, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="conv_bn")(x)
    x = layers.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same", name="dw")(x)
    x = layers.BatchNormalization(scale=False, name="dw_bn")(x)
    x = layers.ReLU()(x)
    x = layers.SeparableConv2D(6, 3, padding="valid", dilation_rate=1, name="sep")(x)
    x = layers.BatchNormalization(center=False, name="sep_bn")(x)
    shared = layers.Conv2D(6, 1, name="shared")(x)  # feeds a BN and the sum: must stay
    y = layers.BatchNormalization(name="shared_bn")(shared)
    x = layers.Add()([shared, y])
    x = layers.Conv2D(6, 1, activation="relu", name="activated")(x)  # BN after a ReLU: not linear
    x = layers.BatchNormalization(name="activated_bn")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x)


def test_folding_keeps_the_outputs_and_removes_only_safe_pairs():
    model = _small_model()
    _randomise_statistics(model)
    pairs = {(conv.name, bn.name) for conv, bn in foldable_pairs(model)}
    assert pairs == {("conv", "conv_bn"), ("dw", "dw_bn"), ("sep", "sep_bn")}
    folded = fold_batchnorm(model)
    assert _batchnorms(folded) == _batchnorms(model) - 3
    images = np.random.default_rng(1).uniform(-1, 1, (4, 12, 12, 3)).astype(np.float32)
    expected = model(images, training=False).numpy()
    np.testing.assert_allclose(folded(images, training=False).numpy(), expected, rtol=1e-4, atol=1e-5)
    # the original is untouched and the copy made no variables of its own
    assert _batchnorms(model) == 5
    assert {id(v) for v in folded.weights} <= {id(v) for v in model.weights}


@pytest.mark.parametrize("name", ["mobilenet_v2", "xception", "inception_resnet_v2"])
def test_a_folded_backbone_inside_a_classifier_computes_the_same(name):
    from scenecls.classifier import build_classifier

    spec = get_spec(name)
    size = max(spec.min_size, 75)
    model = build_classifier(spec, 3, size=size, weights=None)
    _randomise_statistics(model)
    folded = for_inference(model)
    assert _batchnorms(folded) == 0 < _batchnorms(model)  # these backbones fold every one
    images = np.random.default_rng(2).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(
        folded(images, training=False).numpy(), model(images, training=False).numpy(), atol=1e-5
    )


def test_models_that_cannot_be_copied_or_would_not_gain_run_as_they_are():
    sequential = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 1)])
    assert for_inference(sequential) is sequential
    inputs = keras.Input((4, 4, 3))
    no_batchnorm = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    assert for_inference(no_batchnorm) is no_batchnorm
    model = _small_model()
    assert for_inference(model, images=FOLD_FROM - 1) is model  # copying would cost more than it saves
    assert for_inference(model, images=FOLD_FROM) is not model


def test_a_backbone_in_mixed_precision_folds_to_its_compute_dtype():
    from scenecls.precision import dtype_policy

    with dtype_policy("bfloat16"):
        backbone = build_backbone(get_spec("mobilenet_v2"), 32, None)
    _randomise_statistics(backbone)
    folded = fold_batchnorm(backbone)
    images = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    got = folded(images, training=False)
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    expected = np.asarray(backbone(images, training=False), dtype=np.float32)
    scale = np.abs(expected).max()
    assert np.abs(np.asarray(got, dtype=np.float32) - expected).max() < 0.05 * scale
