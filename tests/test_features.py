"""The frozen-phase feature cache: exact, reused, and rebuilt whenever anything it depends on changes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from scenecls.caches.features import compute_features, head_model, load_or_compute
from scenecls.caches.store import CacheInputs
from scenecls.classifier import build_classifier, find_backbone
from scenecls.data.augment import AugmentConfig, augmented_copies
from scenecls.data.layout import Split
from scenecls.data.pipeline import make_dataset, prepare_data
from scenecls.heads import HeadConfig
from tests.conftest import write_class_folders

SIZE = (32, 32)


class Recorder:
    def __init__(self):
        self.logs, self.warnings = [], []

    def log(self, message):
        self.logs.append(message)

    def warn(self, message):
        self.warnings.append(message)

    def task(self, *args, **kwargs):
        from scenecls.progress import NullReporter

        return NullReporter().task("")


@pytest.fixture(scope="module")
def model():
    return build_classifier("convnext_tiny", 3, size=32, weights=None, head=HeadConfig(dense=2, units=16))


@pytest.fixture
def data(tmp_path):
    return prepare_data(write_class_folders(tmp_path / "set", 6, size=40), val_split=0.3)


def _inputs(train, val) -> CacheInputs:
    """The images of an entry with no augmented copies, in batches of 8."""
    return CacheInputs(train, val, SIZE, batch_size=8, augment=AugmentConfig(), copies=0, seed=0)


def test_cached_features_give_the_same_outputs_as_images(model, data):
    features = compute_features(model, data.train, SIZE, batch_size=8)
    assert features.shape == (1, len(data.train), 768)
    from_features = head_model(model).predict(features[0], verbose=0)
    images = np.concatenate([x for x, _ in make_dataset(data.train, SIZE, 8).as_numpy_iterator()])
    from_images = model.predict(images, verbose=0)
    np.testing.assert_allclose(from_features, from_images, atol=1e-5)


def test_augmented_copies_differ_from_the_plain_one(model, data):
    layers = augmented_copies(AugmentConfig(), 2, 1)
    features = compute_features(model, data.train, SIZE, batch_size=8, augmentations=layers)
    assert features.shape[0] == 3
    assert not np.allclose(features[0], features[1]) and not np.allclose(features[1], features[2])


def test_built_features_are_read_back_mapped_not_kept_in_memory(model, data, tmp_path):
    """A data set of any size trains its head from the entry's pages, not from a copy of every row."""
    backbone = find_backbone(model)
    built = load_or_compute(model, backbone, _inputs(data.train, data.val), cache_root=tmp_path / "cache")
    entry = tmp_path / "cache" / "features" / built.key
    assert isinstance(built.train, np.memmap) and Path(built.train.filename) == entry / "train.npy"
    assert isinstance(built.val, np.memmap) and Path(built.val.filename) == entry / "val.npy"
    computed = compute_features(model, data.train, SIZE, batch_size=8)
    np.testing.assert_allclose(built.train, computed, atol=1e-6)

    unpublished = load_or_compute(
        model, backbone, _inputs(data.train, data.val), cache_root=tmp_path / "other", publish=False
    )
    assert not isinstance(unpublished.train, np.memmap)  # nothing written: the rows stay in memory
    np.testing.assert_array_equal(unpublished.train, built.train)


def test_an_entry_is_computed_straight_into_its_files_and_published_whole(tmp_path):
    """Building holds no row in memory: the rows are written into the staging folder's mapped files,
    which become the entry; a build that does not publish computes in memory and writes nothing."""
    from scenecls.caches import features

    folder = tmp_path / "cache" / "features" / ("k" * 24)
    with features.EntryBuild(folder, {"v": 1}, 2, 5, 3, 4, reporter=Recorder()) as build:
        assert isinstance(build.train, np.memmap) and isinstance(build.val, np.memmap)
        staging = Path(build.train.filename).parent
        assert staging.parent == folder.parent and staging.name.endswith(".building")
        assert build.train.shape == (2, 5, 4) and build.val.shape == (3, 4)
        build.train[:] = np.arange(40, dtype=np.float32).reshape(2, 5, 4)
        build.val[:] = 7.0
        assert not folder.exists()  # nothing published before finish
        train, val = build.finish()
    assert not staging.exists() and (folder / "meta.json").is_file()
    assert Path(train.filename) == folder / "train.npy" and Path(val.filename) == folder / "val.npy"
    np.testing.assert_array_equal(np.load(folder / "train.npy"), np.arange(40).reshape(2, 5, 4))
    np.testing.assert_array_equal(val, np.full((3, 4), 7.0))

    elsewhere = tmp_path / "none" / ("k" * 24)
    with features.EntryBuild(elsewhere, {"v": 1}, 1, 5, 0, 4, reporter=Recorder(), publish=False) as build:
        assert not isinstance(build.train, np.memmap)
        assert build.finish()[0] is build.train
    assert not elsewhere.parent.exists()


def test_cache_is_reused_and_rebuilt_when_data_or_files_change(model, data, tmp_path):
    backbone = find_backbone(model)
    kwargs = dict(cache_root=tmp_path / "cache")
    first = load_or_compute(model, backbone, _inputs(data.train, data.val), **kwargs)
    assert not first.reused
    recorder = Recorder()
    second = load_or_compute(model, backbone, _inputs(data.train, data.val), reporter=recorder, **kwargs)
    assert second.reused and second.key == first.key
    assert any("reusing" in line for line in recorder.logs)
    np.testing.assert_array_equal(first.train, second.train)

    # Another image in the training split: another key, computed afresh.
    fewer = Split(data.train.paths[1:], data.train.labels[1:])
    third = load_or_compute(model, backbone, _inputs(fewer, data.val), **kwargs)
    assert not third.reused and third.key != first.key and third.train.shape[1] == len(fewer)

    # A damaged cache file is detected and rebuilt, never used.
    computed = np.array(first.train)  # first.train maps the entry that is damaged next
    entry = tmp_path / "cache" / "features" / first.key / "train.npy"
    raw = bytearray(entry.read_bytes())
    raw[-4:] = b"\xff\xff\xff\xff"
    entry.write_bytes(bytes(raw))
    recorder = Recorder()
    fourth = load_or_compute(model, backbone, _inputs(data.train, data.val), reporter=recorder, **kwargs)
    assert not fourth.reused and recorder.warnings
    np.testing.assert_allclose(fourth.train, computed, atol=1e-6)


def test_other_backbone_weights_mean_another_key(data, tmp_path):
    kwargs = dict(cache_root=tmp_path / "cache")
    a = build_classifier("mobilenet_v2", 3, size=32, weights=None)
    b = build_classifier("mobilenet_v2", 3, size=32, weights=None)  # other random weights
    key_a = load_or_compute(a, find_backbone(a), _inputs(data.train, data.val), **kwargs).key
    key_b = load_or_compute(b, find_backbone(b), _inputs(data.train, data.val), **kwargs).key
    assert key_a != key_b


def test_a_full_disk_while_writing_the_feature_cache_is_a_warning_and_training_goes_on(tmp_path, monkeypatch):
    """numpy's "122880 requested and 48096 written" was a traceback: now one warning that names the
    cache and the room it needs, and the run trains on the features it has."""
    import errno

    from click.testing import CliRunner

    from scenecls.caches import features
    from scenecls.cli import cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(features.store, "allocate", full)  # reserving the entry's blocks
    data = write_class_folders(tmp_path / "data", 6, size=32)
    result = CliRunner().invoke(
        cli,
        ["train", "--data", str(data), "--backbone", "mobilenet_v2", "--weights", "none", "--image-size",
         "32", "-b", "8", "--epochs", "1", "--finetune-epochs", "0", "--no-export", "--project",
         str(tmp_path / "runs")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.stderr.splitlines() if "feature cache could not be" in line)
    assert "No space left on device" in warning and "it needs" in warning
    staging = (Path(os.environ["SCENECLS_HOME"]) / "cache" / "features").glob(".*")
    assert not list(staging)  # nothing half-written is left
