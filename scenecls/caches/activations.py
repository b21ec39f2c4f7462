"""The fine-tuning activation cache: run only what trains.

While the last N blocks of a backbone are fine-tuned, everything below them is frozen (batch norm in
inference mode, weights fixed), so it maps an image to the same activations every epoch. The backbone is
therefore cut where its first unfrozen block begins — a single tensor, the block map's cut — and the
*lower* part runs once per image and augmented copy; each epoch then trains only the *upper* part (the
unfrozen blocks and the head, the classifier's own layers) on the stored activations. The saved model is
the ordinary whole classifier.

Fresh augmentation every epoch cannot be stored, so ``copies`` augmented versions of every training image
are (epoch ``e`` trains on copy ``e mod copies``). Activations are stored as float16 in memory-mapped
``.npy`` files, under a key made of everything they depend on: the lower part's weights (hashed), the cut,
input size, augmentation, copies and seed, the exact images and labels, the compute dtype. A stale key is
never looked up; an entry that fails its checksums is rebuilt, never used; an entry is written in a
staging folder and renamed into place whole, so an interrupted build leaves nothing half-written behind.

float16 keeps 11 bits of mantissa but only five of exponent: activations far from 1 would underflow to
zero (a randomly initialised MobileNetV2 gives 1e-11 at its last blocks) or overflow. So each entry is
stored times a power of two (``scale`` in its ``meta.json``) that brings the first batch's largest value
to 1/64 of float16's range — as loss scaling does for gradients — and exactly divided out when read. An
entry whose later batches still overflow is stored as float32 instead.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenecls.caches import store
from scenecls.caches.features import weights_sha256
from scenecls.caches.store import CacheInputs
from scenecls.data.augment import augmented_copies
from scenecls.errors import DataError
from scenecls.files import (
    UNWRITABLE,
    cannot_write,
    check_free_space,
)
from scenecls.frozen_pass import runtime_key_fields
from scenecls.progress import NullReporter, Reporter
from scenecls.unfreeze import UnfreezePolicy

CACHE_VERSION = 3  # 2: stored times a power-of-two scale; 3: batch normalisation folded
STORED_DTYPE = np.float16  # half the disk and page cache of float32; see benchmarks/README.md
HEADROOM = 64.0  # how much larger than the first batch's largest value later values may be in float16


class CacheUnavailable(DataError):
    """The entry cannot be built here (no room on the disk): fine-tune on images instead."""


@dataclass(frozen=True)
class CutModels:
    """Where the classifier is cut: ``lower`` maps images to the cut tensor, ``upper`` maps it to
    class probabilities through the classifier's own layers (so training ``upper`` trains the model)."""

    layer: str  # the first unfrozen backbone layer: the cut tensor is its input
    lower: object  # keras.Model: image -> activations at the cut
    upper: object  # keras.Model: activations -> probabilities
    lower_layers: tuple  # the backbone layers below the cut (what the activations depend on)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.upper.input.shape[1:])


def cut_index(block_map, policy: UnfreezePolicy) -> int | None:
    """Index in ``backbone.layers`` of the first unfrozen layer, whose input is the cut tensor; None when
    nothing below the trained part could be cached (``all``, raw ``layers``, or every block)."""
    if policy.kind != "blocks" or policy.count == 0:
        return None
    start = block_map.last(policy.count)[0].start
    return start if start > 0 else None


def split_classifier(model, backbone, index: int) -> CutModels:
    """The lower and upper models of ``model`` cut at the input of ``backbone.layers[index]``.

    The tensor is taken as that layer's input rather than as the previous layer's output: a residual
    sum written as an operation (ConvNeXt's ``x + branch``) is not a layer of its own.
    """
    import keras

    first = backbone.layers[index]
    cut = first.input
    if isinstance(cut, (list, tuple)):  # a layer that joins tensors starts the block: its producer's output
        cut = backbone.layers[index - 1].output
    position = model.layers.index(backbone)
    backbone_input = model.layers[position - 1].output  # the input as the backbone sees it (scaled)
    lower = keras.Model(
        model.input, keras.Model(backbone.input, cut)(backbone_input, training=False), name="lower"
    )
    inputs = keras.Input(tuple(cut.shape[1:]), name="activations")
    x = keras.Model(cut, backbone.output, name="upper_backbone")(inputs, training=False)
    for layer in model.layers[position + 1 :]:
        x = layer(x)
    upper = keras.Model(inputs, x, name="upper")
    return CutModels(first.name, lower, upper, tuple(backbone.layers[:index]))


def cache_key(backbone, cut: CutModels, inputs: CacheInputs) -> tuple[str, dict]:
    """The entry's key and the fields it hashes: everything the activations at ``cut`` depend on."""
    augment = inputs.augment
    augmented = augment.enabled
    fields = {
        "version": CACHE_VERSION,
        "backbone": backbone.name,
        "cut": cut.layer,
        # the frozen part's weights: the same weights give the same activations
        "weights": weights_sha256(w for layer in cut.lower_layers for w in layer.weights),
        "size": list(inputs.size),
        "augment": augment.to_dict() if augmented else None,
        "copies": inputs.copies if augmented else 1,
        "seed": inputs.seed if augmented else None,
        "train": inputs.train.digest(),
        "val": inputs.val.digest(),
        "dtype": np.dtype(STORED_DTYPE).name,
    }
    compute = backbone.dtype_policy.name
    if compute != "float32":
        fields["compute"] = compute
    fields.update(runtime_key_fields(inputs.runtime))
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return key, fields


@dataclass
class CachedActivations:
    """Memory-mapped activations: ``train`` is ``(copies, n, *shape)``, ``val`` ``(n_val, *shape)``,
    both stored times ``scale`` (see :func:`storage_scale`; :meth:`read` divides it out)."""

    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    key: str
    folder: Path
    reused: bool
    scale: float = 1.0

    def read(self, stored: np.ndarray) -> np.ndarray:
        """Stored values (a slice of ``train`` or ``val``) as the float32 activations they stand for."""
        return np.multiply(stored, np.float32(1.0 / self.scale), dtype=np.float32)


def storage_scale(sample: np.ndarray) -> float:
    """The power of two that brings ``sample``'s largest magnitude to float16's largest / HEADROOM.

    A power of two, so that scaling and unscaling are exact; 1.0 for an all-zero or non-finite sample.
    """
    peak = float(np.max(np.abs(sample))) if sample.size else 0.0
    if not np.isfinite(peak) or peak == 0.0:
        return 1.0
    return float(2.0 ** np.floor(np.log2(float(np.finfo(np.float16).max) / HEADROOM / peak)))


def load_or_build(
    cut: CutModels,
    backbone,
    inputs: CacheInputs,
    *,
    cache_root: Path,
    reporter: Reporter | None = None,
    build: bool = True,
) -> CachedActivations | None:
    """The entry for this cut from ``cache_root``, or (with ``build``) computed and written there.

    Without ``build`` a missing entry gives None (a worker of a cluster looks for the chief's entry).
    """
    reporter = reporter or NullReporter()
    train, val = inputs.train, inputs.val
    key, fields = cache_key(backbone, cut, inputs)
    folder = entry_folder(cache_root, key)
    stored = _open(folder, fields, len(train), len(val), cut.shape)
    if stored is not None:
        reporter.log(f"Activation cache: reusing {folder} (cut before {cut.layer})")
        store.mark_used(folder)
        return CachedActivations(
            stored[0], np.asarray(train.labels), stored[1], np.asarray(val.labels), key, folder, True,
            stored[2],
        )  # fmt: skip
    if not build:
        return None
    if folder.exists():
        reporter.warn(f"activation cache {folder} is stale or damaged; rebuilding it")
        shutil.rmtree(folder, ignore_errors=True)
    size_bytes = entry_bytes(fields["copies"], len(train), len(val), cut.shape)
    try:
        check_free_space("the activation cache", size_bytes, folder.parent)
    except DataError as exc:
        raise CacheUnavailable(str(exc)) from None
    augmentations = copy_layers(inputs, fields)
    try:
        _build(folder, fields, cut, inputs, augmentations, reporter)
    except OSError as exc:  # a full disk, a file-size limit, a read-only cache: go on without it
        if exc.errno not in UNWRITABLE:
            raise
        raise CacheUnavailable(cannot_write("the activation cache", folder.parent, size_bytes, exc)) from None
    return read_back(folder, fields, cut, inputs, reporter)


def entry_folder(cache_root: Path, key: str) -> Path:
    return cache_root / "activations" / key


def copy_layers(inputs: CacheInputs, fields: dict) -> list:
    """The augmentation layer of each stored copy (None each when augmentation is off: one copy)."""
    if not fields["augment"]:
        return [None] * fields["copies"]
    if inputs.augmentations is not None:
        return list(inputs.augmentations)
    return augmented_copies(inputs.augment, fields["copies"], inputs.seed + 1)


def read_back(folder: Path, fields: dict, cut: CutModels, inputs: CacheInputs, reporter: Reporter):
    """The entry just built in ``folder``, memory-mapped. Its checksums were just computed from these
    files: reading them back checks meta and shapes only."""
    train, val = inputs.train, inputs.val
    stored = _open(folder, fields, len(train), len(val), cut.shape, checksums=False)
    if stored is None:  # written and at once unreadable: a full or failing disk
        raise CacheUnavailable(f"the activation cache {folder} could not be read back after writing it")
    reporter.log(f"Activation cache: built {folder} (cut before {cut.layer})")
    key = folder.name
    return CachedActivations(
        stored[0], np.asarray(train.labels), stored[1], np.asarray(val.labels), key, folder, False, stored[2]
    )


def entry_bytes(copies: int, n_train: int, n_val: int, shape: tuple[int, ...]) -> int:
    """The disk an entry takes (as float16: twice that in the rare entry stored as float32)."""
    return (copies * n_train + n_val) * int(np.prod(shape)) * np.dtype(STORED_DTYPE).itemsize


def _build(
    folder: Path, fields: dict, cut: CutModels, inputs: CacheInputs, augmentations: list, reporter: Reporter
) -> None:
    from scenecls.frozen_pass import frozen_forward

    copies, train, val, batch_size = fields["copies"], inputs.train, inputs.val, inputs.batch_size
    count = copies * len(train) + len(val)
    forward = frozen_forward(cut.lower, batch_size, images=count, runtime=inputs.runtime, reporter=reporter)
    steps_train, steps_val = -(-len(train) // batch_size), -(-len(val) // batch_size)
    task = reporter.task("Caching activations", total=copies * steps_train + steps_val, unit="batches")
    try:
        with store.building(folder):
            scale = None
            for dtype in (STORED_DTYPE, np.float32):
                staging = store.start(folder)
                task.update(completed=0)
                try:
                    scale = _write_arrays(staging, dtype, cut.shape, forward, inputs, augmentations, task)
                    break
                except Overflow:
                    reporter.log(
                        f"Activation cache: values beyond float16's range; storing {folder.name} as float32"
                    )
            store.publish(staging, folder, fields, shape=list(cut.shape), scale=scale)
    finally:
        task.close()


class Overflow(Exception):
    """A batch's scaled activations do not fit the stored dtype."""


def _write_arrays(
    staging: Path, dtype, shape: tuple[int, ...], forward, inputs: CacheInputs, augmentations: list, task
) -> float:
    """Fill ``train.npy`` (a copy per augmentation) and ``val.npy`` in ``staging``; the scale they are
    stored at."""
    from scenecls.data.pipeline import finite_dataset_warnings_silenced, make_dataset

    train, val, size, batch_size = inputs.train, inputs.val, inputs.size, inputs.batch_size
    train_store, val_store = store.open_arrays(
        staging, dtype, (len(augmentations), len(train), *shape), (len(val), *shape)
    )
    scale = None if dtype == np.float16 else 1.0
    with finite_dataset_warnings_silenced():
        for copy, layers in enumerate(augmentations):
            dataset = make_dataset(train, size, batch_size, augment=layers, drop_unreadable=False)
            scale = _fill(train_store[copy], dataset, forward, task, scale)
        if len(val):  # none with --val-split 0
            scale = _fill(
                val_store, make_dataset(val, size, batch_size, drop_unreadable=False), forward, task, scale
            )
    for memmap in (train_store, val_store):
        memmap.flush()
    return scale


def _fill(memmap: np.ndarray, dataset, forward, task, scale: float | None) -> float:
    """Write the lower part's outputs for ``dataset`` into ``memmap`` times ``scale`` (chosen from the
    first batch when None); the scale. Raises :class:`Overflow` when a value does not fit ``memmap``."""
    at = 0
    for images, _ in dataset:
        batch = forward(images)
        scale = store_rows(memmap, at, batch, scale)
        at += len(batch)
        task.advance()
    return 1.0 if scale is None else scale


def store_rows(memmap: np.ndarray, at: int, batch: np.ndarray, scale: float | None) -> float:
    """Write ``batch`` (float32 activations) into ``memmap[at:]`` times ``scale`` (chosen from this batch
    when None); the scale. Raises :class:`Overflow` when a value does not fit ``memmap``'s dtype."""
    if scale is None:
        scale = storage_scale(batch)
    with np.errstate(over="ignore"):  # an overflow is found just below, and handled
        scaled = (batch * np.float32(scale)).astype(memmap.dtype)
    if not np.isfinite(scaled).all() and np.isfinite(batch).all():
        raise Overflow
    memmap[at : at + len(batch)] = scaled
    return scale


def _open(
    folder: Path, fields: dict, n_train: int, n_val: int, shape: tuple[int, ...], *, checksums: bool = True
) -> tuple[np.ndarray, np.ndarray, float] | None:
    meta = store.read_meta(folder, fields, checksums=checksums)
    if meta is None:
        return None
    try:
        train = np.load(folder / "train.npy", mmap_mode="r")
        val = np.load(folder / "val.npy", mmap_mode="r")
        scale = float(meta["scale"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if train.shape != (fields["copies"], n_train, *shape) or val.shape != (n_val, *shape):
        return None
    if not (np.isfinite(scale) and scale > 0):
        return None
    return train, val, scale
