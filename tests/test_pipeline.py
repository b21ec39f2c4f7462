"""Splits, class weights and the tf.data pipeline on generated images."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from scenecls.data.augment import AugmentConfig, build_augmentation
from scenecls.data.layout import Split
from scenecls.data.pipeline import class_weights, make_dataset, prepare_data, stratified_split
from scenecls.errors import DataError


def test_stratified_split_proportions_and_determinism():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    train, val = stratified_split(labels, 0.2, seed=7)
    assert sorted(train + val) == list(range(100)) and not set(train) & set(val)
    assert Counter(labels[i] for i in val) == {0: 10, 1: 6, 2: 4}
    assert stratified_split(labels, 0.2, seed=7) == (train, val)
    assert stratified_split(labels, 0.2, seed=8) != (train, val)


def test_tiny_classes_keep_an_image_on_each_side():
    labels = [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2]
    train, val = stratified_split(labels, 0.2, seed=0)
    assert Counter(labels[i] for i in val) == {0: 1, 1: 2}
    assert Counter(labels[i] for i in train) == {0: 1, 1: 6, 2: 1}


def test_class_weights_balance_the_loss():
    weights = class_weights([0] * 30 + [1] * 10, 3)
    assert weights[0] * 30 == pytest.approx(weights[1] * 10)
    assert weights[2] == 1.0


def test_prepare_splits_and_skips_bad_files(class_folders):
    (class_folders / "alpha" / "zero.jpg").write_bytes(b"")
    (class_folders / "beta" / "text.png").write_text("not an image")
    data = prepare_data(class_folders, val_split=0.2, seed=3)
    assert data.classes == ["alpha", "beta", "gamma"]
    assert len(data.train) + len(data.val) == 30
    assert Counter(data.val.labels) == {0: 2, 1: 2, 2: 2}
    assert sorted(reason for _, reason in data.skipped) == ["empty file", "not an image"]
    assert data.val_source == "split" and data.test is None


def test_prepare_prefers_val_folder(split_dataset):
    data = prepare_data(split_dataset, val_split=0.5)
    assert data.val_source == "folder"
    assert (len(data.train), len(data.val), len(data.test)) == (36, 12, 12)


def test_prepare_refuses_data_without_readable_images(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no readable training images"):
        prepare_data(tmp_path)


def test_dataset_batches_are_float_rgb_at_model_size(class_folders, tmp_path):
    data = prepare_data(class_folders)
    Image.new("CMYK", (60, 40), (0, 0, 255, 0)).save(tmp_path / "cmyk.jpg")
    split = Split([*data.train.paths[:5], str(tmp_path / "cmyk.jpg")], [*data.train.labels[:5], 1])
    ds = make_dataset(split, (32, 40), batch_size=4)
    batches = list(ds.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(4, 32, 40, 3), (2, 32, 40, 3)]
    assert batches[0][0].dtype == np.float32 and batches[0][0].max() > 1.0
    assert np.concatenate([b[1] for b in batches]).tolist() == split.labels


def test_files_broken_after_the_scan_are_dropped_not_fatal(class_folders):
    data = prepare_data(class_folders)
    broken = data.train.paths[0]
    open(broken, "wb").close()
    ds = make_dataset(data.train, (16, 16), batch_size=64)
    images = sum(b[0].shape[0] for b in ds.as_numpy_iterator())
    assert images == len(data.train) - 1


def test_shuffle_is_seeded(class_folders):
    data = prepare_data(class_folders)

    def order(seed):
        ds = make_dataset(data.train, (8, 8), batch_size=100, shuffle=True, seed=seed)
        return next(ds.as_numpy_iterator())[1].tolist()

    assert order(1) == order(1)
    assert sorted(order(1)) == sorted(data.train.labels)
    assert order(1) != order(2)


def test_augmentation_changes_pixels_not_shapes(class_folders):
    data = prepare_data(class_folders)
    plain = make_dataset(data.train, (32, 32), batch_size=8)
    augment = build_augmentation(AugmentConfig(), seed=1)
    augmented = make_dataset(data.train, (32, 32), batch_size=8, augment=augment)
    a = next(plain.as_numpy_iterator())[0]
    b = next(augmented.as_numpy_iterator())[0]
    assert a.shape == b.shape and not np.allclose(a, b)
    assert b.min() >= 0.0 and b.max() <= 255.0


def test_augmentation_repeats_for_a_seed_and_changes_every_epoch(class_folders):
    """Batches are augmented by parallel threads: a seed must still give the same images every run."""
    data = prepare_data(class_folders)

    def epochs(seed: int, count: int = 2) -> list[np.ndarray]:
        augment = build_augmentation(AugmentConfig(), seed=seed)
        dataset = make_dataset(data.train, (32, 32), batch_size=1, augment=augment)  # many small batches
        return [np.concatenate([x for x, _ in dataset.as_numpy_iterator()]) for _ in range(count)]

    first, second = epochs(1), epochs(1)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], first[1])  # a fresh augmentation in each epoch
    assert not np.allclose(first[0], epochs(2, 1)[0])


def test_augmentation_can_be_switched_off():
    assert build_augmentation(AugmentConfig(0, 0, 0, 0, False)) is None
