"""Backbone registry, block maps, heads, unfreeze policies and model files, with ``weights=None``."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from scenecls.classifier import (
    backbone_of,
    build_classifier,
    find_backbone,
    load_model,
    save_model,
)
from scenecls.cli import cli
from scenecls.errors import ModelError, UsageError
from scenecls.heads import HeadConfig, head_param_count
from scenecls.models.blocks import inbound_layers
from scenecls.models.registry import backbone_names, build_backbone, get_spec
from scenecls.unfreeze import UnfreezePolicy, apply_unfreeze, is_batchnorm, parse_unfreeze

SEED_BACKBONES = ["mobilenet_v2", "xception", "inception_resnet_v2"]
REQUIRED = [*SEED_BACKBONES, "efficientnetv2_b0", "resnet50_v2", "convnext_tiny"]


def small_size(name: str) -> int:
    return max(get_spec(name).min_size, 32)


@pytest.fixture(scope="module")
def backbones():
    """Each registered backbone built once at its smallest input, random weights."""
    return {name: build_backbone(get_spec(name), small_size(name), None) for name in backbone_names()}


def test_registry_has_the_required_backbones():
    assert set(REQUIRED) <= set(backbone_names())
    assert backbone_names()[:3] == SEED_BACKBONES
    for name in SEED_BACKBONES:
        assert get_spec(name).default_size == 150
    with pytest.raises(UsageError, match="unknown backbone"):
        get_spec("vgg99")


@pytest.mark.parametrize("name", REQUIRED)
def test_static_figures_match_the_built_model(backbones, name):
    spec, model = get_spec(name), backbones[name]
    assert model.count_params() == spec.params
    assert len(model.layers) == spec.layers
    assert len(spec.block_map(model).blocks) == spec.blocks


@pytest.mark.parametrize("name", REQUIRED)
def test_block_map_covers_every_layer_in_order(backbones, name):
    model = backbones[name]
    block_map = get_spec(name).block_map(model)
    covered = [i for block in block_map.blocks for i in range(block.start, block.stop)]
    assert covered == list(range(len(model.layers)))  # no gaps, no overlaps, in order
    assert len(set(block_map.names)) == len(block_map.names)
    # A block takes its inputs only from itself or earlier blocks.
    position = {id(layer): i for i, layer in enumerate(model.layers)}
    for i, layer in enumerate(model.layers):
        for parent in inbound_layers(layer, set(position)):
            assert position[id(parent)] <= i


def test_block_names_follow_the_architectures(backbones):
    names = {n: get_spec(n).block_map(backbones[n]).names for n in SEED_BACKBONES}
    assert names["mobilenet_v2"] == ["stem", *[f"block_{i}" for i in range(1, 17)], "Conv_1"]
    assert names["xception"] == [f"block{i}" for i in range(1, 15)]
    irv2 = names["inception_resnet_v2"]
    assert irv2[:3] == ["stem", "mixed_5b", "block35_1"]
    assert irv2.index("mixed_6a") == 12 and irv2.index("mixed_7a") == 33
    assert irv2[-2:] == ["block8_10", "conv_7b"]
    # Xception's unnamed residual layers belong to the block whose output they produce.
    block_map = get_spec("xception").block_map(backbones["xception"])
    block2 = block_map.as_dict()["block2"]
    assert block2[0] == "block2_sepconv1" and block2[-1].startswith("add")


def test_parse_unfreeze():
    assert parse_unfreeze("0") == [UnfreezePolicy("blocks", 0)]
    assert parse_unfreeze("all") == [UnfreezePolicy("all")]
    assert parse_unfreeze("1,3,5") == [UnfreezePolicy("blocks", n) for n in (1, 3, 5)]
    with pytest.raises(UsageError):
        parse_unfreeze("some")


@pytest.mark.parametrize("name", REQUIRED)
def test_unfreeze_policies_train_exactly_the_chosen_blocks(name):
    model = build_classifier(name, 3, size=small_size(name), weights=None, head=HeadConfig(dense=1))
    backbone = find_backbone(model)
    block_map = get_spec(name).block_map(backbone)
    head_weights = {
        id(w) for layer in model.layers if layer.name.startswith(("head_", "pred")) for w in layer.weights
    }
    for policy in [*parse_unfreeze("0,1,3,5"), UnfreezePolicy("all"), UnfreezePolicy("layers", 20)]:
        report = apply_unfreeze(backbone, block_map, policy, model=model)
        if policy.kind == "all":
            first = 0
        elif policy.kind == "layers":
            first = len(backbone.layers) - policy.count
        else:
            first = block_map.last(policy.count)[0].start if policy.count else len(backbone.layers)
        for i, layer in enumerate(backbone.layers):
            for weight in layer.trainable_weights if layer.trainable else []:
                assert i >= first, (policy, layer.name, weight.name)
            if i >= first and layer.weights and not is_batchnorm(layer):
                assert layer.trainable and backbone.trainable, (policy, layer.name)
        batchnorms = [layer for layer in backbone.layers if is_batchnorm(layer)]
        assert not any(bn.trainable for bn in batchnorms)
        trainable = {id(w) for w in model.trainable_weights}
        assert head_weights <= trainable  # the head always trains
        assert report.trainable_params == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        assert report.layers == len(backbone.layers) - first
        if policy.kind == "blocks":
            assert report.blocks == [b.name for b in block_map.last(policy.count)]


def test_frozen_backbone_trains_only_the_head():
    head = HeadConfig(dense=2, units=16)
    model = build_classifier("mobilenet_v2", 4, size=32, weights=None, head=head)
    backbone = find_backbone(model)
    report = apply_unfreeze(
        backbone, get_spec("mobilenet_v2").block_map(backbone), UnfreezePolicy("blocks", 0), model
    )
    assert report.trainable_params == head_param_count(1280, 4, head)
    assert report.blocks == [] and report.layers == 0


@pytest.mark.parametrize("dense", [0, 1, 2, 3, 5])
def test_heads_shapes_and_parameter_counts(dense):
    head = HeadConfig(dense=dense, units=8, dropout=0.3)
    model = build_classifier("mobilenet_v2", 6, size=32, weights=None, head=head)
    assert model.output_shape == (None, 6)
    dense_layers = [layer for layer in model.layers if layer.name.startswith("head_dense")]
    assert len(dense_layers) == dense
    head_params = sum(
        layer.count_params() for layer in model.layers if layer.name.startswith(("head_", "pred"))
    )
    assert head_params == head_param_count(1280, 6, head)
    probs = model.predict(np.random.rand(3, 32, 32, 3).astype("float32") * 255, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_preprocessing_lives_in_the_model():
    model = build_classifier("mobilenet_v2", 2, size=32, weights=None, head=HeadConfig(dense=0))
    scale = model.get_layer("scale_input")
    out = scale(np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32"))
    np.testing.assert_allclose(np.asarray(out), [[[[-1.0, 0.0, 1.0]]]], atol=1e-6)
    effnet = build_classifier("efficientnetv2_b0", 2, size=32, weights=None)
    assert "scale_input" not in [layer.name for layer in effnet.layers]  # normalises itself


@pytest.mark.parametrize(
    "name",
    [
        "mobilenet_v2",
        pytest.param("inception_resnet_v2", marks=pytest.mark.slow),
        pytest.param("convnext_tiny", marks=pytest.mark.slow),  # over 10 s: its weights are large
    ],
)
def test_save_and_load_round_trip_in_safe_mode(tmp_path, name):
    size = small_size(name)
    model = build_classifier(name, 3, size=size, weights=None, head=HeadConfig(dense=1, units=8))
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    path = save_model(model, tmp_path / "best.keras")
    # No temporary left over; the model's checksum beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.keras", "best.keras.sha256"]
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-6)
    assert backbone_of(loaded).name == name


def test_bad_model_files_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "missing.keras")
    (tmp_path / "text.keras").write_text("hello")
    with pytest.raises(ModelError, match="not a Keras model file"):
        load_model(tmp_path / "text.keras")
    model = build_classifier("mobilenet_v2", 2, size=32, weights=None, head=HeadConfig(dense=0))
    good = save_model(model, tmp_path / "good.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError):
        load_model(tmp_path / "cut.keras")
    import keras

    inputs = keras.Input((4,))
    foreign = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="someone_elses")
    foreign.save(tmp_path / "foreign.keras")
    with pytest.raises(ModelError, match="not made by scenecls"):
        load_model(tmp_path / "foreign.keras")


def test_weights_from_a_file_and_from_the_wrong_architecture(tmp_path):
    spec = get_spec("mobilenet_v2")
    source = build_backbone(spec, 32, None)
    source.save_weights(tmp_path / "mnv2.weights.h5")
    loaded = build_backbone(spec, 32, tmp_path / "mnv2.weights.h5")
    for a, b in zip(source.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = build_backbone(get_spec("xception"), 71, None)
    other.save_weights(tmp_path / "xception.weights.h5")
    with pytest.raises(ModelError, match="does not fit mobilenet_v2") as info:
        build_backbone(spec, 32, tmp_path / "xception.weights.h5")
    message = str(info.value)
    assert "\n" not in message and "(--backbone chooses it)" in message
    assert ":;" not in message and "Example error message" not in message  # Keras's lead-in to its list
    with pytest.raises(ModelError, match="does not exist"):
        build_backbone(spec, 32, tmp_path / "nothing.h5")


def test_imagenet_weights_offline_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(ModelError) as info:
        build_backbone(get_spec("xception"), 71, "imagenet")
    message = str(info.value)
    assert "xception_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "keras" / "models") in message and "--weights" in message


def test_too_small_input_is_a_usage_error():
    with pytest.raises(UsageError, match="at least 71x71"):
        build_backbone(get_spec("xception"), 32, None)


def test_backbones_command(monkeypatch, tmp_path):
    cache = tmp_path / "keras" / "models"
    cache.mkdir(parents=True)
    (cache / get_spec("xception").weights_file(150)).write_bytes(b"pretend")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    result = CliRunner().invoke(cli, ["backbones", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(REQUIRED) <= set(rows)
    assert rows["xception"]["imagenet_cached"] is True
    assert rows["mobilenet_v2"]["imagenet_cached"] is False
    assert rows["inception_resnet_v2"]["blocks"] == 45


def test_model_file_is_a_zip_with_config(tmp_path):
    model = build_classifier("mobilenet_v2", 2, size=32, weights=None, head=HeadConfig(dense=0))
    path = save_model(model, tmp_path / "m.keras")
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    assert config["config"]["name"] == "scenecls_mobilenet_v2"
