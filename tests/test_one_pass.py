"""Both caches from one pass over the images: the same entries as each cache builds on its own, and a run
that decodes its images once for both phases."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from scenecls.caches import activations, features, one_pass
from scenecls.caches.store import CacheInputs
from scenecls.classifier import build_classifier, find_backbone
from scenecls.data.augment import NO_AUGMENTATION, AugmentConfig, augmented_copies
from scenecls.data.pipeline import finite_dataset_warnings_silenced, make_dataset, prepare_data, view_batches
from scenecls.models import folding
from scenecls.models.registry import get_spec
from scenecls.unfreeze import UnfreezePolicy, apply_unfreeze
from tests.conftest import invoke, write_class_folders

QUICK = ["--backbone", "mobilenet_v2", "--weights", "none", "--image-size", "32", "-b", "8", "--no-export"]


def _cut(size: int = 32, unfreeze: int = 2):
    import keras

    keras.utils.set_random_seed(0)
    model = build_classifier("mobilenet_v2", 3, size=size, weights="none")
    inner = find_backbone(model)
    blocks = get_spec("mobilenet_v2").block_map(inner)
    apply_unfreeze(inner, blocks, UnfreezePolicy("blocks", 0), model=model)  # the head phase: all frozen
    index = activations.cut_index(blocks, UnfreezePolicy("blocks", unfreeze))
    return model, inner, activations.split_classifier(model, inner, index)


def test_a_view_is_the_batch_make_dataset_gives_from_the_same_seed(tmp_path):
    root = write_class_folders(tmp_path / "data", 5, size=40)
    data = prepare_data(root, val_split=0.2, seed=0)
    config = AugmentConfig()
    layers = [None, *augmented_copies(config, 2, 7)]
    with finite_dataset_warnings_silenced():
        dataset = view_batches(data.train, (32, 32), 4, layers)
        views = list(dataset)
        again = list(dataset)  # the seeds were drawn up front: a second pass gives the same views
        alone = [
            np.concatenate([x for x, _ in make_dataset(data.train, (32, 32), 4, augment=layer)])
            for layer in [None, *augmented_copies(config, 2, 7)]
        ]
    for index in range(3):
        joined = np.concatenate([batch[index] for batch, _ in views])
        assert np.array_equal(joined, alone[index]), index
        assert np.array_equal(joined, np.concatenate([batch[index] for batch, _ in again]))
    assert not np.array_equal(alone[1], alone[2]) and not np.array_equal(alone[0], alone[1])
    labels = np.concatenate([y for _, y in views])
    assert labels.tolist() == list(data.train.labels)


@pytest.mark.parametrize(
    ("cache_aug", "augment"),
    [(0, AugmentConfig()), (1, AugmentConfig()), (2, NO_AUGMENTATION)],
    ids=["features-plain", "features-augmented", "no-augmentation"],
)
def test_the_joint_pass_builds_the_entries_each_cache_builds_alone(tmp_path, monkeypatch, cache_aug, augment):
    """Feature copy 1 and activation copy 0 are one view (the same seed) when the feature cache keeps an
    augmented copy; without augmentation every copy of both caches is the images as they are."""
    monkeypatch.setattr(folding, "FOLD_FROM", 0)  # batch norms folded, as with real data sets
    root = write_class_folders(tmp_path / "data", 6, size=40)
    data = prepare_data(root, val_split=0.25, seed=0)
    model, inner, cut = _cut()

    def inputs(copies: int) -> CacheInputs:
        layers = augmented_copies(augment, copies, 1)
        return CacheInputs(data.train, data.val, (32, 32), 4, augment, copies, seed=0, augmentations=layers)

    built = one_pass.build_both(inner, cut, inputs(cache_aug), inputs(2), cache_root=tmp_path / "joint")
    assert built is not None
    joint_features, joint_activations = built
    alone_features = features.load_or_compute(model, inner, inputs(cache_aug), cache_root=tmp_path / "alone")
    alone_activations = activations.load_or_build(cut, inner, inputs(2), cache_root=tmp_path / "alone")

    # The same keys, so that each cache finds the joint pass's entry as its own.
    assert joint_features.key == alone_features.key and joint_activations.key == alone_activations.key
    assert (tmp_path / "joint" / "features" / joint_features.key / "meta.json").is_file()
    reread = features.load_or_compute(model, inner, inputs(cache_aug), cache_root=tmp_path / "joint")
    assert reread.reused and np.array_equal(reread.train, joint_features.train)
    assert activations.load_or_build(cut, inner, inputs(2), cache_root=tmp_path / "joint").reused

    # The same augmented copies, stored at the same scale; features from the upper part of the backbone
    # run on the activations are the whole backbone's, to float precision.
    assert joint_activations.scale == alone_activations.scale
    for name in ("train", "val"):
        joint, alone = getattr(joint_activations, name), getattr(alone_activations, name)
        assert joint.shape == alone.shape and joint.dtype == alone.dtype
        assert np.allclose(
            joint_activations.read(joint),
            alone_activations.read(alone),
            rtol=1e-3,
            atol=1e-3 * np.abs(alone_activations.read(alone)).max(),
        )
    if augment.enabled:
        assert not np.array_equal(joint_activations.train[0], joint_activations.train[1])
    else:
        assert joint_activations.train.shape[0] == 1  # one copy: the images as they are
        assert np.array_equal(joint_features.train[0], joint_features.train[2])
    assert joint_features.train.shape == alone_features.train.shape == (cache_aug + 1, len(data.train), 1280)
    for joint, alone in (
        (joint_features.train, alone_features.train),
        (joint_features.val, alone_features.val),
    ):
        assert np.allclose(joint, alone, rtol=1e-4, atol=1e-4 * np.abs(alone).max())
    assert not any(p.name.endswith(".building") for p in (tmp_path / "joint" / "activations").iterdir())


def test_the_joint_pass_leaves_existing_entries_to_their_own_cache(tmp_path):
    root = write_class_folders(tmp_path / "data", 4, size=40)
    data = prepare_data(root, val_split=0.25, seed=0)
    _, inner, cut = _cut()
    inputs = CacheInputs(data.train, data.val, (32, 32), 4, AugmentConfig(), 1, seed=0)
    activations.load_or_build(cut, inner, inputs, cache_root=tmp_path)
    assert one_pass.build_both(inner, cut, inputs, inputs, cache_root=tmp_path) is None
    assert not (tmp_path / "features").exists()  # nothing computed: the caller builds the features alone
    other = CacheInputs(data.train, data.val, (32, 32), 8, AugmentConfig(), 1, seed=0)  # another batch
    assert one_pass.build_both(inner, cut, inputs, other, cache_root=tmp_path / "other") is None


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_class_folders(root / "train", 12, seed=3, size=40)
    write_class_folders(root / "test", 4, seed=4, size=40)
    return root


@pytest.mark.slow  # trains end to end
def test_a_run_decodes_its_images_once_for_both_caches(data, tmp_path):
    project = tmp_path / "runs"
    args = ["train", "--data", str(data), *QUICK, "--epochs", "1", "--finetune-epochs", "1",
            "--unfreeze", "1", "--seed", "21"]  # fmt: skip
    result = invoke(*args, "--project", str(project), "--name", "first")
    assert result.exit_code == 0, result.output
    assert "Caching features and activations: done" in result.stderr
    assert "Caching features:" not in result.stderr and "Caching activations:" not in result.stderr
    assert "Feature cache: built" in result.stderr and "Activation cache: built" in result.stderr
    metrics = json.loads((project / "first" / "metrics.json").read_text())
    assert metrics["feature_cache"] == "built" and metrics["activation_cache"] == {"finetune": "built"}

    again = invoke(*args, "--project", str(project), "--name", "again")
    assert again.exit_code == 0, again.output
    assert "Caching" not in again.stderr
    metrics = json.loads((project / "again" / "metrics.json").read_text())
    assert metrics["feature_cache"] == "reused" and metrics["activation_cache"] == {"finetune": "reused"}
    cache = Path(os.environ["SCENECLS_HOME"]) / "cache"
    assert not [p for p in cache.rglob("*.building")]


@pytest.mark.slow  # trains end to end
def test_ctrl_c_in_the_joint_pass_leaves_no_entry_and_the_resumed_run_builds_both(
    data, tmp_path, monkeypatch
):
    def interrupted(*args):  # Ctrl-C as the first batch's views are being cached
        raise KeyboardInterrupt

    monkeypatch.setattr(one_pass, "_fill", interrupted)
    cache = Path(os.environ["SCENECLS_HOME"]) / "cache"
    before = {kind: set((cache / kind).glob("*")) for kind in ("features", "activations")}
    project = tmp_path / "runs"
    args = ["--data", str(data), *QUICK, "--epochs", "1", "--finetune-epochs", "1", "--unfreeze", "1",
            "--seed", "22"]  # fmt: skip
    result = invoke("-q", "train", *args, "--project", str(project))
    assert result.exit_code == 130
    assert f"scenecls train --resume {project / 'train'}" in result.stderr
    state = json.loads((project / "train" / "state.json").read_text())
    assert state["status"] == "interrupted" and state["epoch"] == 0
    assert {kind: set((cache / kind).glob("*")) for kind in before} == before  # nothing half-written

    monkeypatch.undo()
    resumed = invoke("train", "--resume", str(project / "train"), "--format", "json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["epochs"] == 2
    metrics = json.loads((project / "train" / "metrics.json").read_text())
    assert metrics["feature_cache"] == "built" and metrics["activation_cache"] == {"finetune": "built"}
    for kind in before:
        assert len(set((cache / kind).glob("*")) - before[kind]) == 1  # one whole entry each


def test_the_joint_pass_on_litert_builds_tensorflows_entries_under_their_own_keys(tmp_path, monkeypatch):
    """``--cache-runtime litert``: the entries TensorFlow builds, to float rounding, kept apart from them
    (their keys name the runtime; the default's keys are those from before there was a choice)."""
    pytest.importorskip("ai_edge_litert", reason="LiteRT has no wheels for this platform")
    from tests.test_folding import _randomise_statistics

    monkeypatch.setattr(folding, "FOLD_FROM", 0)
    root = write_class_folders(tmp_path / "data", 6, size=40)
    data = prepare_data(root, val_split=0.25, seed=0)
    model, inner, cut = _cut(unfreeze=8)
    _randomise_statistics(model)  # batch norms away from the identity: values that do not vanish
    inputs = CacheInputs(data.train, data.val, (32, 32), 4, AugmentConfig(), 2, seed=0,
                         augmentations=augmented_copies(AugmentConfig(), 2, 1))  # fmt: skip
    built = {}
    for runtime in ("litert", "tensorflow"):
        these = dataclasses.replace(inputs, runtime=runtime)
        built[runtime] = one_pass.build_both(inner, cut, these, these, cache_root=tmp_path / "cache")
    (lite_features, lite_activations), (tf_features, tf_activations) = built["litert"], built["tensorflow"]
    assert lite_features.key != tf_features.key and lite_activations.key != tf_activations.key
    assert features.cache_key(inner, inputs)[1].get("runtime") is None  # the default's fields as they were
    assert activations.cache_key(inner, cut, dataclasses.replace(inputs, runtime="litert"))[1]["runtime"] == (
        "litert"
    )
    assert len(list((tmp_path / "cache" / "activations").iterdir())) == 2  # both kept
    for name in ("train", "val"):
        lite, tf = (entry.read(getattr(entry, name)) for entry in (lite_activations, tf_activations))
        assert np.abs(tf).max() > 0.1  # not the vanishing values of a random network's deep layers
        assert not np.array_equal(lite, tf)  # computed by each runtime: the last bits differ somewhere
        assert np.allclose(lite, tf, rtol=1e-3, atol=1e-3 * np.abs(tf).max())
        lite, tf = getattr(lite_features, name), getattr(tf_features, name)
        assert np.allclose(lite, tf, rtol=1e-4, atol=1e-4 * np.abs(tf).max())


@pytest.mark.slow  # trains end to end, three times
def test_a_run_on_litert_keeps_its_entries_apart_and_reuses_them(data, tmp_path):
    pytest.importorskip("ai_edge_litert", reason="LiteRT has no wheels for this platform")
    project = tmp_path / "runs"
    args = ["train", "--data", str(data), *QUICK, "--epochs", "1", "--finetune-epochs", "1",
            "--unfreeze", "1", "--seed", "23", "--project", str(project)]  # fmt: skip
    cache = Path(os.environ["SCENECLS_HOME"]) / "cache"

    def entries() -> set[Path]:
        return {p for kind in ("features", "activations") for p in (cache / kind).glob("*")}

    before = entries()
    lite = invoke(*args, "--cache-runtime", "litert", "--name", "lite")
    assert lite.exit_code == 0, lite.output
    assert "Caching features and activations: done" in lite.stderr and "TensorFlow" not in lite.stderr
    assert json.loads((project / "lite" / "config.json").read_text())["cache_runtime"] == "litert"
    on_litert = entries() - before
    assert len(on_litert) == 2
    listed = json.loads(invoke("cache", "--format", "json").stdout)
    assert {row["detail"].endswith(", litert") for row in listed if Path(row["path"]) in on_litert} == {True}

    again = invoke(*args, "--cache-runtime", "litert", "--name", "again")
    assert again.exit_code == 0, again.output
    metrics = json.loads((project / "again" / "metrics.json").read_text())
    assert metrics["feature_cache"] == "reused" and metrics["activation_cache"] == {"finetune": "reused"}

    default = invoke(*args, "--name", "default")  # TensorFlow's entries: built, never LiteRT's read
    assert default.exit_code == 0, default.output
    metrics = json.loads((project / "default" / "metrics.json").read_text())
    assert metrics["feature_cache"] == "built" and metrics["activation_cache"] == {"finetune": "built"}
    assert len(entries() - before) == 4
