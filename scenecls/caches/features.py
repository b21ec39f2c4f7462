"""The frozen-phase feature cache.

While the backbone is frozen its output for an image never changes, so running it every epoch of
phase 1 is waste. Instead the pooled backbone features of every training image are computed once — the
image as it is, plus ``aug_copies`` augmented versions — and the head is trained on them (epoch ``e``
uses copy ``e mod (aug_copies + 1)``). The head's layers are the classifier's own, so phase 2 and saved
models are exactly as without the cache.

Features live on disk under a key made of everything they depend on: the backbone's actual weights
(hashed), input size, augmentation and seed, and the exact images and labels. Any change gives a new
key; a damaged or incomplete cache entry fails its checksums and is rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenecls.caches import store
from scenecls.caches.store import CacheInputs
from scenecls.data.augment import augmented_copies
from scenecls.data.layout import Split
from scenecls.errors import DataError
from scenecls.files import (
    UNWRITABLE,
    cannot_write,
    check_free_space,
)
from scenecls.frozen_pass import DEFAULT_RUNTIME, runtime_key_fields
from scenecls.heads import POOL_LAYER
from scenecls.progress import NullReporter, Reporter

CACHE_VERSION = 3  # 2: augmented copies made by one affine resampling; 3: batch normalisation folded


@dataclass
class CachedFeatures:
    train: np.ndarray  # (copies, n_train, d)
    train_labels: np.ndarray  # (n_train,)
    val: np.ndarray  # (n_val, d)
    val_labels: np.ndarray
    key: str
    reused: bool


def backbonefile_sha256(backbone) -> str:
    """A hash of the backbone's weights: the same weights give the same features, whatever their source."""
    return weights_sha256(backbone.weights)


def weights_sha256(weights) -> str:
    """A hash of the values and shapes of ``weights`` (variable names differ once a model is reloaded)."""
    digest = hashlib.sha256()
    for weight in weights:
        value = np.ascontiguousarray(np.asarray(weight))
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:20]


def cache_key(backbone, inputs: CacheInputs) -> tuple[str, dict]:
    """The entry's key and the fields it hashes: everything the features depend on."""
    augment, aug_copies, seed = inputs.augment, inputs.copies, inputs.seed
    fields = {
        "version": CACHE_VERSION,
        "backbone": backbone.name,
        "weights": backbonefile_sha256(backbone),
        "size": list(inputs.size),
        "augment": augment.to_dict() if aug_copies else None,
        "aug_copies": aug_copies,
        "seed": seed if aug_copies else None,
        "train": inputs.train.digest(),
        "val": inputs.val.digest(),
    }
    compute = backbone.dtype_policy.name  # mixed precision gives other features than float32
    if compute != "float32":
        fields["compute"] = compute
    fields.update(runtime_key_fields(inputs.runtime))
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return key, fields


def feature_model(classifier):
    """Image in, pooled backbone features out: the classifier up to its head's pooling layer."""
    import keras

    return keras.Model(classifier.input, classifier.get_layer(POOL_LAYER).output, name="features")


def extractor(
    classifier,
    batch_size: int,
    images: int,
    *,
    runtime: str = DEFAULT_RUNTIME,
    reporter: Reporter | None = None,
):
    """``images -> pooled features`` for a pass over ``images`` images, the backbone frozen: on
    ``runtime``, batch normalisation folded (see :func:`~scenecls.frozen_pass.frozen_forward`)."""
    from scenecls.frozen_pass import frozen_forward

    return frozen_forward(
        feature_model(classifier), batch_size, images=images, runtime=runtime, reporter=reporter
    )


def head_model(classifier):
    """Pooled features in, class probabilities out, made of the classifier's own head layers."""
    import keras

    layers = []
    seen_pool = False
    for layer in classifier.layers:
        if seen_pool:
            layers.append(layer)
        seen_pool = seen_pool or layer.name == POOL_LAYER
    features = classifier.get_layer(POOL_LAYER).output.shape[-1]
    inputs = keras.Input((features,), name="features")
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name="head")


def compute_features(
    classifier,
    split: Split,
    size: tuple[int, int],
    *,
    batch_size: int = 32,
    augmentations: list | tuple = (),
    reporter: Reporter | None = None,
    forward=None,
    into: np.ndarray | None = None,
) -> np.ndarray:
    """``(len(augmentations) + 1, n, d)`` features: copy 0 of the images as they are, then one copy per
    augmentation (its layer; see :func:`~scenecls.data.augment.augmented_copies`).

    ``forward`` (images -> features, see :func:`extractor`) can be shared by several splits, so that
    it is traced once. ``into``: the array to fill and return (an entry's file, see :class:`EntryBuild`).
    """
    from scenecls.data.pipeline import finite_dataset_warnings_silenced, make_dataset

    reporter = reporter or NullReporter()
    forward = forward or extractor(classifier, batch_size, images=len(split) * (len(augmentations) + 1))
    rows = into
    if rows is None:  # filled in place: one array at the peak, not a list of batches and its copies
        width = int(classifier.get_layer(POOL_LAYER).output.shape[-1])
        rows = np.zeros((len(augmentations) + 1, len(split), width), np.float32)
    steps = -(-len(split) // batch_size)
    task = reporter.task("Caching features", total=steps * (len(augmentations) + 1), unit="batches")
    try:
        for copy, layers in enumerate([None, *augmentations]):
            dataset = make_dataset(split, size, batch_size, augment=layers, drop_unreadable=False)
            at = 0
            with finite_dataset_warnings_silenced():
                for images, _ in dataset:
                    batch = np.asarray(forward(images), np.float32)
                    rows[copy, at : at + len(batch)] = batch
                    at += len(batch)
                    task.advance()
    finally:
        task.close()
    return rows


def load_or_compute(
    classifier,
    backbone,
    inputs: CacheInputs,
    *,
    cache_root: Path,
    reporter: Reporter | None = None,
    publish: bool = True,
    mmap: bool = False,
) -> CachedFeatures:
    """The entry for these images and this backbone from ``cache_root``, or computed and (with
    ``publish``) written there for the next run. ``mmap``: an entry found there is memory-mapped, not
    loaded (for a reader of a few rows at a time, on a data set of any size); one built and published
    here is always read back mapped (see :class:`EntryBuild`)."""
    reporter = reporter or NullReporter()
    train, val, size, batch_size = inputs.train, inputs.val, inputs.size, inputs.batch_size
    key, fields = cache_key(backbone, inputs)
    folder = entry_folder(cache_root, key)
    cached = _read(folder, fields, len(train), len(val), mmap=mmap)
    if cached is not None:
        reporter.log(f"Feature cache: reusing {folder}")
        store.mark_used(folder)
        return CachedFeatures(
            cached[0], np.asarray(train.labels), cached[1], np.asarray(val.labels), key, True
        )
    if folder.exists() and publish:
        reporter.warn(f"feature cache {folder} is stale or damaged; rebuilding it")
        shutil.rmtree(folder, ignore_errors=True)
    augmentations = copy_layers(inputs)[1:]
    images = len(train) * (inputs.copies + 1) + len(val)
    forward = extractor(classifier, batch_size, images, runtime=inputs.runtime, reporter=reporter)
    width = int(classifier.get_layer(POOL_LAYER).output.shape[-1])
    shapes = (len(augmentations) + 1, len(train), len(val), width)
    with EntryBuild(folder, fields, *shapes, reporter=reporter, publish=publish) as build:
        compute_features(
            classifier, train, size, batch_size=batch_size, augmentations=augmentations, reporter=reporter,
            forward=forward, into=build.train,
        )  # fmt: skip
        if len(val):  # none with --val-split 0
            compute_features(
                classifier, val, size, batch_size=batch_size, reporter=reporter, forward=forward,
                into=build.val[None],
            )  # fmt: skip
        train_features, val_features = build.finish()
    return CachedFeatures(
        train_features, np.asarray(train.labels), val_features, np.asarray(val.labels), key, False
    )


def copy_layers(inputs: CacheInputs) -> list:
    """The augmentation layer of each stored copy: None (the images as they are), then one per augmented
    copy (None each when augmentation is off)."""
    augmentations = inputs.augmentations
    if augmentations is None:
        augmentations = augmented_copies(inputs.augment, inputs.copies, inputs.seed + 1)
    return [None, *augmentations]


def entry_folder(cache_root: Path, key: str) -> Path:
    return cache_root / "features" / key


class EntryBuild:
    """The rows of a feature entry, computed straight into its files in a staging folder (memory-mapped,
    their blocks reserved), so that building an entry of any size holds no row in memory, and published
    whole by :meth:`finish`. A disk without room, or a run that does not publish (a cluster's workers,
    which read the chief's entry), computes into memory instead: a warning for the disk, and the run goes
    on. Used as a context manager: the staging folder goes when the block ends, published or not."""

    def __init__(
        self, folder: Path, fields: dict, copies: int, n_train: int, n_val: int, width: int, *,
        reporter: Reporter, publish: bool = True,
    ) -> None:  # fmt: skip
        self.folder, self.fields, self.reporter = folder, fields, reporter
        self._stack = contextlib.ExitStack()
        self.staging: Path | None = None
        self.needs = 4 * width * (copies * n_train + n_val)
        shapes = {"train": (copies, n_train, width), "val": (n_val, width)}
        if publish:
            try:
                check_free_space("the feature cache", self.needs, folder.parent)
                self._stack.enter_context(store.building(folder))
                self.staging = store.start(folder)
                self.train, self.val = store.open_arrays(self.staging, np.float32, *shapes.values())
                return
            except DataError as exc:  # known beforehand: not enough free space
                reporter.warn(f"{exc}; training goes on without saving the features")
            except OSError as exc:  # a full disk, a file-size limit, a read-only cache
                if exc.errno not in UNWRITABLE:
                    self._stack.close()
                    raise
                self._cannot_write(exc)
            self._stack.close()
            self.staging = None
        self.train, self.val = (np.zeros(shape, np.float32) for shape in shapes.values())

    def __enter__(self) -> EntryBuild:
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Publish the entry and read it back memory-mapped (a reader of a batch at a time holds only the
        pages it touches, which the system can take back); the rows as they are when not publishing."""
        if self.staging is None:
            return self.train, self.val
        shapes = {"train": list(self.train.shape), "val": list(self.val.shape)}
        try:
            for rows in (self.train, self.val):
                rows.flush()
            store.publish(self.staging, self.folder, self.fields, shapes=shapes)
        except OSError as exc:
            if exc.errno not in UNWRITABLE:
                raise
            self._cannot_write(exc)
            return self.train, self.val  # still mapped: the file lives on until the map goes
        self.reporter.log(f"Feature cache: built {self.folder}")
        mapped = _read(self.folder, self.fields, self.train.shape[1], len(self.val), mmap=True)
        return mapped or (self.train, self.val)

    def _cannot_write(self, exc: OSError) -> None:
        self.reporter.warn(
            f"{cannot_write('the feature cache', self.folder.parent, self.needs, exc)}; training goes on"
        )


def _read(
    folder: Path, fields: dict, n_train: int, n_val: int, *, mmap: bool = False
) -> tuple[np.ndarray, np.ndarray] | None:
    if store.read_meta(folder, fields) is None:
        return None
    mode = "r" if mmap else None
    try:
        train = np.load(folder / "train.npy", mmap_mode=mode)
        val = np.load(folder / "val.npy", mmap_mode=mode)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if train.ndim != 3 or train.shape[1] != n_train or val.shape[0] != n_val:
        return None
    return train, val
