"""From an indexed data set to batches a model can eat.

:func:`prepare_data` indexes and checks the images and decides the train / validation / test splits;
:func:`make_dataset` turns one split into a ``tf.data.Dataset`` of ``(images, labels)`` with images as
float32 0-255 RGB at the model's input size (each model scales its own input).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scenecls.data.exclude import exclude_digest, normal, read_exclude
from scenecls.data.images import ImageReadError, load_rgb, scan_cache_path, scan_images
from scenecls.data.layout import DatasetIndex, Split, index_dataset
from scenecls.errors import DataError
from scenecls.paths import cache_dir, data_source
from scenecls.progress import NullReporter, Reporter
from scenecls.units import count


@dataclass
class PreparedData:
    index: DatasetIndex
    train: Split
    val: Split
    test: Split | None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    val_source: str = "folder"  # "folder" when val/ exists, "split", or "none" (--val-split 0)

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    @property
    def validated(self) -> bool:
        """Whether there are validation images (``--val-split 0`` trains on every training image)."""
        return bool(len(self.val))

    def held_out(self, *, test_first: bool = False) -> tuple[Split, str]:
        """Images a saved model can be checked on, and their name: validation, else test, else (with
        ``--val-split 0`` and no test folder) the training images themselves. ``test_first`` puts the
        test images first, for a model chosen on the validation images or trained on several splits
        (an ensemble's members), on which validation figures flatter it."""
        if test_first and self.test:
            return self.test, "test"
        if self.validated:
            return self.val, "validation"
        if self.test:
            return self.test, "test"
        return self.train, "training"


def prepare_data(
    path: Path,
    *,
    val_split: float = 0.2,
    seed: int = 0,
    reporter: Reporter | None = None,
    cache_root: Path | None = None,
    exclude: str | os.PathLike | None = None,
) -> PreparedData:
    """Index ``path``, drop unreadable images (reported, never fatal) and split off validation.

    An existing ``val/`` folder wins over ``val_split``; otherwise a seeded stratified split of the
    training images is used, the same for the same seed and files. ``val_split`` 0 (and no ``val/``)
    keeps every training image for training: the validation split is then empty. ``exclude`` is a
    list of images to leave out (see :mod:`scenecls.data.exclude`), before anything else.
    """
    reporter = reporter or NullReporter()
    if not 0.0 <= val_split < 1.0:
        raise DataError(f"--val-split must be in [0, 1), got {val_split}")
    index = index_dataset(path)
    if exclude:
        leave_out(index, Path(exclude), reporter)
    for message in index.warnings():
        reporter.warn(message)
    all_paths = [p for split in index.splits.values() for p in split.paths]
    cache_file = scan_cache_path(index.root, cache_root or cache_dir())
    scan = scan_images(all_paths, cache_file, reporter=reporter)
    if scan.bad:
        reporter.warn(f"skipped {count(len(scan.bad), 'unreadable file')}; first: {_first_bad(scan.bad)}")
    return split_index(index, scan.bad, val_split=val_split, seed=seed, reporter=reporter)


def split_index(
    index: DatasetIndex,
    bad: list[tuple[str, str]],
    *,
    val_split: float = 0.2,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> PreparedData:
    """The images a run trains, validates and tests on, from an index already made and its scan's
    unreadable files ``bad`` (``(path, reason)``, left out): :func:`prepare_data`'s rules, for a caller
    that has both already (``inspect``). The index's splits are replaced by their readable images."""
    reporter = reporter or NullReporter()
    unreadable = {p for p, _ in bad}
    for name, split in list(index.splits.items()):
        index.splits[name] = split.subset([i for i, p in enumerate(split.paths) if p not in unreadable])

    train = index.splits["train"]
    if not len(train):
        raise DataError(f"no readable training images in {index.root}")
    if len(index.classes) < 2:
        raise DataError(f"{index.root} has {len(index.classes)} class; at least 2 are needed")
    if "val" in index.splits and len(index.splits["val"]):
        val, source = index.splits["val"], "folder"
    elif val_split == 0:
        val, source = train.subset([]), "none"
    else:
        train_idx, val_idx = stratified_split(train.labels, val_split, seed)
        train, val, source = train.subset(train_idx), train.subset(val_idx), "split"
        if not len(val):
            raise DataError(
                "no validation images: no class has 2 readable images to split; add images, add a "
                "val/ folder, or train without validation with --val-split 0"
            )
    missing = [c for i, c in enumerate(index.classes) if i not in set(train.labels)]
    if missing:
        reporter.warn(f"no training images for class(es): {', '.join(missing)}")
    test = index.splits.get("test")
    return PreparedData(index, train, val, test if test else None, list(bad), source)


def same_data(prepared: PreparedData, recorded: dict[str, Any]) -> bool:
    """Whether ``prepared`` holds the very images a run recorded in its ``config.json`` (its data's
    identity: paths within the folder, labels, sizes, times; runs from before identities were recorded
    are held to their fingerprint)."""
    if recorded.get("data_identity"):
        return prepared.index.identity() == recorded["data_identity"]
    if recorded.get("data_fingerprint"):
        return prepared.index.fingerprint() == recorded["data_fingerprint"]
    return True


def prepare_run_data(
    recorded: dict[str, Any],
    *,
    owner: str | os.PathLike,
    val_split: float,
    seed: int,
    data: str | os.PathLike | None = None,
    reporter: Reporter | None = None,
) -> tuple[PreparedData, bool]:
    """The data a run (``owner``, whose ``config.json`` is ``recorded``) trained on, split as it split it:
    ``(prepared, own)``.

    Without ``data``, the run's own data set at the location it recorded, with its exclude list; when
    those images are not the ones it trained on (another set under the same name, images added or
    rewritten since) it is refused in one line, so that nothing of the run is judged, refitted or
    rewritten on other images. With ``data`` (named on purpose), that data set, whole; ``own`` says
    whether it is the run's very images, so that results on other data are saved under another name.
    """
    if data is not None:
        prepared = prepare_data(data_source(data), val_split=val_split, seed=seed, reporter=reporter)
        return prepared, same_data(prepared, recorded)
    source = data_source(recorded.get("data"))
    prepared = prepare_data(
        source, val_split=val_split, seed=seed, reporter=reporter, exclude=recorded.get("exclude")
    )
    if not same_data(prepared, recorded):
        raise DataError(
            f"the images at {Path(source).absolute()} are not the ones {owner} trained on (another data set, "
            f"or images added, removed or rewritten since): pass --data {source} to use them anyway"
        )
    return prepared, True


def leave_out(index: DatasetIndex, exclude: Path, reporter: Reporter) -> None:
    """Drop the images ``exclude`` lists from ``index`` (the files stay where they are)."""
    listed = read_exclude(exclude, index.root)
    dropped: list[str] = []
    before = {name: len(split) for name, split in index.splits.items()}
    classes_before = set(index.splits["train"].labels) if "train" in index.splits else set()
    for name, split in list(index.splits.items()):
        paths = [normal(p) for p in split.paths]
        dropped += [p for p in paths if p in listed]
        index.splits[name] = split.subset([i for i, p in enumerate(paths) if p not in listed])
    if sum(before.values()) and not any(len(split) for split in index.splits.values()):
        raise DataError(f"the exclude list {exclude} removed every image of {index.root}")
    if "train" in index.splits:
        if before.get("train") and not len(index.splits["train"]):
            raise DataError(f"the exclude list {exclude} removed every training image of {index.root}")
        emptied = sorted(classes_before - set(index.splits["train"].labels))
        if emptied:  # a model with a class it never saw a picture of would be worse than useless
            names = ", ".join(index.classes[c] for c in emptied)
            raise DataError(
                f"the exclude list {exclude} removed every training image of class {names}: remove those "
                f"lines from it, or move the class's folder out of the data set to train without it"
            )
    if before.get("val") and "val" in index.splits and not len(index.splits["val"]):
        reporter.warn(
            f"the exclude list {exclude} removed every image of the val/ folder: validation images are "
            f"split off the training images instead (--val-split)"
        )
    unknown = len(listed) - len(set(dropped))
    reporter.log(f"Left out {count(len(dropped), 'image')} listed in {exclude}")
    if unknown:
        reporter.warn(
            f"{count(unknown, 'path')} listed in {exclude} not in {index.root}: nothing to leave out there"
        )
    index.excluded = exclude_digest(dropped) if dropped else None
    index.left_out = len(dropped)


def _first_bad(bad: list[tuple[str, str]]) -> str:
    path, reason = bad[0]
    return f"{path} ({reason})"


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of (train, validation), taking ``fraction`` of every class, seeded.

    Every class with at least two images keeps one on each side, so a small class never
    vanishes from either split.
    """
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in np.unique(labels_arr):
        members = np.flatnonzero(labels_arr == label)
        members = members[rng.permutation(len(members))]
        n_val = round(len(members) * fraction)
        if fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        elif len(members) < 2:
            n_val = 0
        val_idx.extend(members[:n_val].tolist())
        train_idx.extend(members[n_val:].tolist())
    return sorted(train_idx), sorted(val_idx)


def class_weights(labels: Sequence[int], num_classes: int) -> dict[int, float]:
    """Weights that make every class count as much as the others in the loss (``n / (k * n_c)``), from
    the labelled images (an unlabelled one's label is -1)."""
    counts = Counter(label for label in labels if label >= 0)
    total = sum(counts.values())
    return {c: (total / (num_classes * counts[c]) if counts.get(c) else 1.0) for c in range(num_classes)}


@contextlib.contextmanager
def finite_dataset_warnings_silenced():
    """Keras warns that a dataset "ran out of data" and that it cannot shuffle one; ours end each
    epoch on purpose and are shuffled by tf.data, so those warnings are noise for our callers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ran out of data.*")
        warnings.filterwarnings("ignore", message=".*shuffle=True.*")
        yield


def make_dataset(
    split: Split,
    image_size: tuple[int, int],
    batch_size: int,
    *,
    shuffle: bool = False,
    augment=None,
    seed: int = 0,
    cache: bool = False,
    drop_unreadable: bool = True,
    targets: np.ndarray | None = None,
):
    """A ``tf.data.Dataset`` of ``(float32 images 0-255, int32 labels)`` batches, or of ``(images,
    float32 target rows)`` when ``targets`` (one row of class probabilities per image) stands for the labels.

    Images are decoded by Pillow (see :mod:`scenecls.data.images`) in parallel, so every mode and
    EXIF orientation is handled as everywhere else. ``augment`` is a Keras model applied per batch.
    """
    import tensorflow as tf

    labels = np.asarray(split.labels, dtype=np.int32) if targets is None else np.asarray(targets, np.float32)
    ds = _decoded(
        split, image_size, labels, shuffle=shuffle, seed=seed, cache=cache, drop_unreadable=drop_unreadable
    )
    ds = ds.batch(batch_size)
    if augment is not None and hasattr(augment, "next_seed"):
        # Each batch's seed drawn in order by one thread; the parallel step augments from it, so that a
        # seed gives the same images (and a cache entry the same bytes) from run to run.
        ds = ds.map(lambda images, labels: (images, labels, augment.next_seed()))

    def _to_float(images, labels, seed=None):
        return _augmented(tf.cast(images, tf.float32), augment, seed), labels

    ds = ds.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return without_autotuning(ds)


def view_batches(split: Split, image_size: tuple[int, int], batch_size: int, layers: Sequence):
    """A ``tf.data.Dataset`` of ``(views, labels)`` batches: ``views`` holds one float32 batch per layer of
    ``layers`` (None: the images as they are), all made from one decoding of each image.

    A layer's view of batch ``b`` is exactly what ``make_dataset(augment=layer)`` gives as its batch ``b``
    (the same seeds, drawn in the same order from the layer's seed state); the seeds are drawn here, up
    front, so that iterating the dataset again gives the same views.
    """
    import tensorflow as tf

    if not len(split):
        raise DataError("cannot build a pipeline over an empty split")
    steps = -(-len(split) // batch_size)
    seeded = [i for i, layer in enumerate(layers) if layer is not None and hasattr(layer, "next_seed")]
    drawn = [np.stack([np.asarray(layers[i].next_seed()) for _ in range(steps)]) for i in seeded]
    seeds = np.stack(drawn, axis=1) if drawn else np.zeros((steps, 0, 2), np.int32)

    def _views(images, labels, batch_seeds):
        images = tf.cast(images, tf.float32)
        by_layer = dict(zip(seeded, tf.unstack(batch_seeds, num=len(seeded)), strict=True)) if seeded else {}
        return tuple(_augmented(images, layer, by_layer.get(i)) for i, layer in enumerate(layers)), labels

    decoded = _decoded(split, image_size, np.asarray(split.labels, dtype=np.int32)).batch(batch_size)
    ds = tf.data.Dataset.zip(decoded, tf.data.Dataset.from_tensor_slices(seeds)).map(
        lambda batch, batch_seeds: _views(*batch, batch_seeds), num_parallel_calls=tf.data.AUTOTUNE
    )
    return without_autotuning(ds.prefetch(tf.data.AUTOTUNE))


def _decoded(
    split: Split, image_size: tuple[int, int], labels: np.ndarray, *, shuffle: bool = False, seed: int = 0,
    cache: bool = False, drop_unreadable: bool = False,
):  # fmt: skip
    """``(uint8 image, label)`` pairs of ``split`` at ``image_size``, decoded by Pillow in parallel (see
    :func:`make_dataset`), unbatched."""
    import tensorflow as tf

    if not len(split):
        raise DataError("cannot build a pipeline over an empty split")
    height, width = image_size

    def _load(path):
        try:
            return load_rgb(os.fsdecode(path), (height, width))
        except ImageReadError as exc:
            raise ValueError(f"{os.fsdecode(path)!r}: {exc}") from exc

    def _decode(path, label):
        image = tf.numpy_function(_load, [path], tf.uint8, stateful=False)
        image.set_shape((height, width, 3))
        return image, label

    # As bytes, the file system's own: a name that is not valid UTF-8 cannot become a tf.string otherwise.
    paths = np.asarray([os.fsencode(p) for p in split.paths], dtype=object)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle and not cache:
        # Shuffle file names, not decoded images: the buffer then costs bytes, not gigabytes.
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if drop_unreadable:
        ds = ds.ignore_errors()  # a file changed since the scan: drop it, do not kill the run
    if cache:
        ds = ds.cache()  # uint8, a quarter of the float32 size
        if shuffle:
            ds = ds.shuffle(min(len(split), 4096), seed=seed, reshuffle_each_iteration=True)
    return ds


def _augmented(images, layer, seed=None):
    """``images`` (float32) through augmentation ``layer`` (None: as they are), from ``seed`` when given."""
    if layer is None:
        return images
    return layer(images, training=True) if seed is None else layer(images, seed=seed)


def without_autotuning(ds):
    """``ds`` with tf.data's autotuning off. Its thread makes deleting a finished iterator block now and
    then, idle, for up to 5 s (image pipelines) or 9 s (a fine-tuning epoch on cached activations: one
    epoch in four took 20 s instead of 11, the CPU idle and no disk read in between; measured on 2
    cores). Keras makes two iterators per epoch. Without it AUTOTUNE means "one per core" and the
    pipelines measured as fast."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
