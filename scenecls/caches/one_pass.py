"""Both caches of a run from one pass over its images.

A run that trains its head on cached features and then fine-tunes its last blocks on cached activations
needs, from the same frozen backbone, the pooled features of every image (and of the feature cache's
augmented copies) and the activations at the fine-tuning cut of every augmented copy and of the
validation images. Built one after the other, every image is decoded two or three times and the
validation images go through the lower part of the backbone twice. Here each image is decoded once,
every view of it (as it is, and each augmented copy either cache holds) goes once through the lower
part, the activations a view owes the activation cache are stored, and the features a view owes the
feature cache come from the upper part of the backbone run on those same activations.

The entries are the ones the caches build on their own — the same keys, the same augmented copies
(each copy's layer draws the same seeds in the same order, see
:func:`~scenecls.data.pipeline.view_batches`), the same storage — so either cache can later be read,
listed or cleared as ever. When the joint pass does not apply (an entry of either exists already, there
is no room for the activations, or the two caches would be computed from different images), the caller
builds each on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scenecls.caches import activations, features, store
from scenecls.caches.activations import CachedActivations, CutModels
from scenecls.caches.features import CachedFeatures
from scenecls.caches.store import CacheInputs
from scenecls.data.layout import Split
from scenecls.errors import DataError
from scenecls.files import UNWRITABLE, check_free_space
from scenecls.heads import POOL_LAYER
from scenecls.progress import NullReporter, Reporter


@dataclass
class _Views:
    """The distinct views of the images (each augmentation layer once, by its seed; None: the images as
    they are), and which copies of each cache each view fills."""

    layers: list = field(default_factory=list)
    feature_copies: list[list[int]] = field(default_factory=list)  # per view
    activation_copies: list[list[int]] = field(default_factory=list)  # per view

    def add(self, layer, *, feature: int | None = None, activation: int | None = None) -> None:
        seeds = [_seed(known) for known in self.layers]
        if _seed(layer) in seeds:
            index = seeds.index(_seed(layer))
        else:
            index = len(self.layers)
            self.layers.append(layer)
            self.feature_copies.append([])
            self.activation_copies.append([])
        if feature is not None:
            self.feature_copies[index].append(feature)
        if activation is not None:
            self.activation_copies[index].append(activation)

    @staticmethod
    def count(copies: list[list[int]]) -> int:
        return sum(len(each) for each in copies)


def _seed(layer) -> int | None:
    return None if layer is None else layer.seed


def build_both(
    backbone,
    cut: CutModels,
    feature_inputs: CacheInputs,
    activation_inputs: CacheInputs,
    *,
    cache_root: Path,
    reporter: Reporter | None = None,
) -> tuple[CachedFeatures, CachedActivations] | None:
    """Both entries, built in one pass over the images and published in ``cache_root``; None when the
    joint pass does not apply (see the module's docstring) and each cache is to be had on its own."""
    reporter = reporter or NullReporter()
    if not _alike(feature_inputs, activation_inputs):
        return None
    feature_key, feature_fields = features.cache_key(backbone, feature_inputs)
    key, activation_fields = activations.cache_key(backbone, cut, activation_inputs)
    if any(feature_fields[split] != activation_fields[split] for split in ("train", "val")):
        return None  # other images (the keys' digests say so without stat'ing every image again)
    feature_folder = features.entry_folder(cache_root, feature_key)
    activation_folder = activations.entry_folder(cache_root, key)
    if feature_folder.exists() or activation_folder.exists():
        return None  # reused (or found damaged and rebuilt) by its own cache, as ever
    train, val = activation_inputs.train, activation_inputs.val
    size_bytes = activations.entry_bytes(activation_fields["copies"], len(train), len(val), cut.shape)
    try:
        check_free_space("the activation cache", size_bytes, activation_folder.parent)
    except DataError:
        return None  # the fine-tuning phase says so when it looks for its cache

    views = _Views()
    for copy, layer in enumerate(activations.copy_layers(activation_inputs, activation_fields)):
        views.add(layer, activation=copy)  # first: the scale is chosen from activation copy 0's first batch
    for copy, layer in enumerate(features.copy_layers(feature_inputs)):
        views.add(layer, feature=copy)

    forward = _forward(cut, activation_inputs, views, reporter)
    train_steps, val_steps = (-(-len(split) // activation_inputs.batch_size) for split in (train, val))
    task = reporter.task("Caching features and activations", total=train_steps + val_steps, unit="batches")
    copies = views.count(views.feature_copies)
    try:
        with (
            features.EntryBuild(
                feature_folder, feature_fields, copies, len(train), len(val), forward.width, reporter=reporter
            ) as rows,
            store.building(activation_folder),
        ):
            for dtype in (activations.STORED_DTYPE, np.float32):
                staging = store.start(activation_folder)
                task.update(completed=0)
                try:
                    scale = _pass(staging, dtype, views, forward, cut.shape, task, rows)
                    break
                except activations.Overflow:
                    reporter.log(f"Activation cache: values beyond float16's range; storing {key} as float32")
            store.publish(staging, activation_folder, activation_fields, shape=list(cut.shape), scale=scale)
            train_features, val_features = rows.finish()
    except OSError as exc:  # a full disk, a file-size limit, a read-only cache: each cache on its own
        if exc.errno not in UNWRITABLE:
            raise
        return None
    finally:
        task.close()
    cached_features = CachedFeatures(
        train_features, np.asarray(train.labels), val_features, np.asarray(val.labels), feature_key, False
    )
    cached = activations.read_back(activation_folder, activation_fields, cut, activation_inputs, reporter)
    return cached_features, cached


def _alike(a: CacheInputs, b: CacheInputs) -> bool:
    """Whether the two entries take their images at the same size, in the same batches, augmented alike,
    on the same runtime (whether they are the same images, their keys tell)."""

    def how(inputs: CacheInputs) -> tuple:
        return inputs.size, inputs.batch_size, inputs.augment, inputs.seed, inputs.runtime

    return how(a) == how(b)


def pooled_model(cut: CutModels):
    """Activations at the cut in, the head's pooled features out: the upper part up to its pooling layer
    (the classifier's own layers, so that the features are the ones the feature cache computes)."""
    import keras

    inputs = keras.Input(cut.shape, name="activations")
    x = cut.upper.layers[1](inputs, training=False)  # the backbone above the cut
    for layer in cut.upper.layers[2:]:
        x = layer(x)
        if layer.name == POOL_LAYER:
            return keras.Model(inputs, x, name="pooled")
    raise ValueError(f"the classifier has no {POOL_LAYER!r} layer above the cut")


@dataclass(frozen=True)
class _Forward:
    """The two halves of the pass, each on the inputs' runtime, batch normalisation folded (see
    :func:`~scenecls.frozen_pass.frozen_forward`), and the images they take."""

    lower: Callable  # images -> activations at the cut
    pool: Callable  # activations at the cut -> pooled features
    width: int  # numbers per pooled feature row
    inputs: CacheInputs


def _forward(cut: CutModels, inputs: CacheInputs, views: _Views, reporter: Reporter) -> _Forward:
    from scenecls.frozen_pass import frozen_forward

    n_train, n_val, batch_size = len(inputs.train), len(inputs.val), inputs.batch_size
    lower_images = len(views.layers) * n_train + n_val
    pool_images = views.count(views.feature_copies) * n_train + n_val
    how = {"runtime": inputs.runtime, "reporter": reporter}
    lower = frozen_forward(cut.lower, batch_size, images=lower_images, **how)
    pooled = pooled_model(cut)
    pool = frozen_forward(pooled, batch_size, images=pool_images, **how)
    return _Forward(lower, pool, int(pooled.output.shape[-1]), inputs)


def _pass(staging: Path, dtype, views: _Views, forward: _Forward, shape: tuple[int, ...], task, rows):
    """One pass over the images: the activations written into ``staging`` as ``dtype``, the pooled
    features into ``rows`` (a :class:`~scenecls.caches.features.EntryBuild`); the activations' scale."""
    from scenecls.data.pipeline import finite_dataset_warnings_silenced

    train, val = forward.inputs.train, forward.inputs.val
    activation_copies = views.count(views.activation_copies)
    train_store, val_store = store.open_arrays(
        staging, dtype, (activation_copies, len(train), *shape), (len(val), *shape)
    )
    scale = None if dtype == np.float16 else 1.0
    with finite_dataset_warnings_silenced():
        scale = _fill(train, views, train_store, rows.train, forward, task, scale)
        if len(val):  # none with --val-split 0
            as_it_is = _Views([None], [[0]], [[0]])
            scale = _fill(val, as_it_is, val_store[None], rows.val[None], forward, task, scale)
    for memmap in (train_store, val_store):
        memmap.flush()
    return 1.0 if scale is None else scale


def _fill(split: Split, views: _Views, stored, feature_rows, forward: _Forward, task, scale: float | None):
    """Every view of every batch of ``split`` through the lower part: its activations into
    ``stored[copy]``, its pooled features into ``feature_rows[copy]``, as the view owes them; the
    activations' scale (see :func:`~scenecls.caches.activations.store_rows`)."""
    from scenecls.data.pipeline import view_batches

    size, batch_size = forward.inputs.size, forward.inputs.batch_size
    at = 0
    for batch, _ in view_batches(split, size, batch_size, views.layers):
        for view, images in enumerate(batch):
            cut_activations = forward.lower(images)
            for copy in views.activation_copies[view]:
                scale = activations.store_rows(stored[copy], at, cut_activations, scale)
            if views.feature_copies[view]:
                pooled = forward.pool(cut_activations)
                for copy in views.feature_copies[view]:
                    feature_rows[copy, at : at + len(pooled)] = pooled
        at += len(batch[0])
        task.advance()
    return scale
