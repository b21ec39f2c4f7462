"""Where a phase's epochs come from, behind one small interface.

An *epoch source* knows what ``fit`` trains (``trainer``), on which data (``train_data``,
``val_data``), which callbacks that data needs, and how the phase keeps its checkpoints:

* :class:`ImageSource` — decoded, augmented images through the whole classifier;
* :class:`FeatureSource` — while the backbone is frozen, the cached pooled features through the head
  alone (see :mod:`scenecls.caches.features`); epoch ``e`` uses copy ``e mod copies`` of each image;
* :class:`CutPointSource` — while fine-tuning the last blocks, the cached activations at the first
  unfrozen block through the upper part alone (see :mod:`scenecls.caches.activations`).

The phase loop does not know which one it runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from scenecls.caches.activations import CachedActivations, CutModels
from scenecls.caches.features import CachedFeatures, head_model
from scenecls.caches.store import CacheInputs
from scenecls.data.augment import NO_AUGMENTATION, augmented_copies, build_augmentation
from scenecls.data.mixing import Mixing, mix_batches, one_hot_labels
from scenecls.data.pipeline import make_dataset, without_autotuning
from scenecls.paths import cache_dir
from scenecls.training.checkpoints import HeadCheckpoints, ModelCheckpoints
from scenecls.training.context import Learner, RunContext
from scenecls.unfreeze import UnfreezePolicy


class EpochSource(Protocol):
    trainer: Any  # the keras.Model that fit() trains
    train_data: Any  # tf.data.Dataset, one pass per epoch
    val_data: Any  # None without validation images
    steps: int  # batches per epoch

    def callbacks(self) -> list[keras.callbacks.Callback]: ...

    def checkpoints(self, run_dir: Path) -> ModelCheckpoints: ...

    def val_probabilities(self, model) -> np.ndarray | None:
        """``model``'s probabilities on the validation images, in order, from what this source holds
        instead of the images (for the temperature fitted after the last epoch); None when it cannot."""
        ...


class ImageSource:
    """Images through the whole classifier (augmented as the pipeline says)."""

    def __init__(self, model, train_data, val_data, steps: int) -> None:
        self.model = model
        self.trainer = model
        self.train_data, self.val_data, self.steps = train_data, val_data, steps

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return []

    def checkpoints(self, run_dir: Path) -> ModelCheckpoints:
        return ModelCheckpoints(self.model, run_dir)

    def val_probabilities(self, model) -> np.ndarray | None:
        return None  # the images are all it has: they are read again


class FeatureSource:
    """Cached pooled features through the classifier's own head layers.

    The head model shares the classifier's layers and optimizer, so checkpoints of the classifier hold
    exactly what was trained, optimizer state included. Each epoch reads the copy it is due and shuffles
    it with a permutation of its own (seeded by the run's seed and the epoch), so an epoch after
    ``--resume`` sees exactly what it would have seen without the interruption.
    """

    def __init__(
        self, model, cached: CachedFeatures, *, batch_size: int, seed: int, mixing: Mixing | None = None,
        targets: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        import tensorflow as tf

        self.model, self._cached = model, cached
        self.trainer = head_model(model)
        self.trainer.compile(
            optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"], jit_compile=model.jit_compile
        )
        copies, count, width = cached.train.shape
        self.steps = -(-count // batch_size)
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        rows = cached.train  # in memory or memory-mapped: read a batch at a time, never copied whole
        labels = tf.constant(cached.train_labels if targets is None else np.asarray(targets, np.float32))

        def read_rows(epoch, chosen):
            return np.asarray(rows[int(epoch) % copies][chosen], np.float32)

        def epoch_data(_):
            epoch = self._epoch.read_value()
            order = tf.random.experimental.stateless_shuffle(
                tf.range(count, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
            )

            def batch_of(chosen):
                features = tf.numpy_function(read_rows, [epoch, chosen], tf.float32, stateful=False)
                features.set_shape((None, width))
                return features, tf.gather(labels, chosen)

            return tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(batch_of)

        self.train_data = tf.data.Dataset.range(1).flat_map(epoch_data).prefetch(2)
        self.val_data = None  # no validation images (--val-split 0)
        if len(cached.val):
            self.val_data = tf.data.Dataset.from_tensor_slices((cached.val, cached.val_labels))
            self.val_data = self.val_data.batch(batch_size)
        if targets is not None and self.val_data is not None:  # soft targets: one-hot validation rows
            self.val_data = one_hot_labels(self.val_data, int(model.output.shape[-1]))
        if mixing is not None and mixing.on:  # MixUp of the features; CutMix has no boxes to cut here
            classes = int(model.output.shape[-1])
            self.train_data = mix_batches(self.train_data, classes, mixing, seed=seed, images=False)
            if self.val_data is not None:
                self.val_data = one_hot_labels(self.val_data, classes)
        self.train_data = without_autotuning(self.train_data)
        self.val_data = None if self.val_data is None else without_autotuning(self.val_data)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [_EpochCounter(self._epoch)]

    def checkpoints(self, run_dir: Path) -> ModelCheckpoints:
        return HeadCheckpoints(self.model, self.trainer, run_dir)

    def val_probabilities(self, model) -> np.ndarray | None:
        """Through ``model``'s head, from the cached features (when its backbone is the one they came
        from: one whose weights changed since, as after fine-tuning, gives other features)."""
        from scenecls.classifier import find_backbone

        backbone_layers = find_backbone(self.model).layers
        if not len(self._cached.val) or not _same_weights(model, self.model, backbone_layers):
            return None
        head = self.trainer if model is self.model else head_model(model)
        return _predict_rows(head, self._cached.val, lambda rows: np.asarray(rows, np.float32))


class _EpochCounter(keras.callbacks.Callback):
    """Tells :class:`FeatureSource`'s data which epoch is starting (before its iterator is made)."""

    def __init__(self, variable) -> None:
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.variable.assign(epoch)


class CutPointSource:
    """Cached activations at the cut through the upper part of the classifier (its own layers).

    The upper model shares the classifier's layers and optimizer; the optimizer is built on the
    classifier's variables in the classifier's order, so ``last.keras`` (written whole every epoch) holds
    its state exactly as a run on images would, and ``--resume`` loads it back. Epoch ``e`` reads copy
    ``e mod copies`` in an order of its own (seeded by the run's seed and the epoch), so an epoch after
    ``--resume`` sees exactly what it would have seen without the interruption. ``map_aug`` (``flip``,
    ``crop`` or ``flip,crop``) changes each batch's maps as it is read, seeded the same way.
    """

    def __init__(
        self, model, cut: CutModels, cached: CachedActivations, *, batch_size: int, seed: int,
        map_aug: str = "none", targets: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        import tensorflow as tf

        self.model, self._cut, self._cached = model, cut, cached
        self.trainer = cut.upper
        self.trainer.compile(
            optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"], jit_compile=model.jit_compile
        )
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        copies, count = cached.train.shape[0], cached.train.shape[1]
        self.steps = -(-count // batch_size)
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        shape = tuple(cached.train.shape[2:])
        classes = int(model.output.shape[-1])
        soft = targets is not None
        label_type = tf.float32 if soft else tf.int64
        label_shape = (None, classes) if soft else (None,)
        train = cached.train
        labels = np.asarray(targets, np.float32) if soft else np.asarray(cached.train_labels, np.int64)
        orders: dict[int, np.ndarray] = {}

        def read_batch(epoch, step):
            epoch, step = int(epoch), int(step)
            if epoch not in orders:
                orders.clear()
                orders[epoch] = np.random.default_rng([seed, epoch]).permutation(count)
            chosen = np.sort(orders[epoch][step * batch_size : (step + 1) * batch_size])
            batch = cached.read(train[epoch % copies][chosen])
            rng = np.random.default_rng([seed, epoch, step])
            if "flip" in map_aug:
                batch = flip_half(batch, rng)
            if "crop" in map_aug:
                batch = crop_resize(batch, rng)
            return batch, labels[chosen]

        def epoch_data(_):
            epoch = self._epoch.read_value()
            return tf.data.Dataset.range(self.steps).map(
                lambda step: _batch_of(
                    tf.numpy_function(read_batch, [epoch, step], (tf.float32, label_type)), shape, label_shape
                )
            )

        self.train_data = without_autotuning(tf.data.Dataset.range(1).flat_map(epoch_data).prefetch(2))
        val, val_labels = cached.val, np.asarray(cached.val_labels, dtype=np.int64)
        if soft:  # soft targets: one-hot validation rows
            val_labels = np.eye(classes, dtype=np.float32)[val_labels]

        def read_val(step):
            rows = slice(int(step) * batch_size, (int(step) + 1) * batch_size)
            return cached.read(val[rows]), val_labels[rows]

        val_steps = -(-len(val) // batch_size)
        self.val_data = (
            tf.data.Dataset.range(val_steps)
            .map(
                lambda step: _batch_of(
                    tf.numpy_function(read_val, [step], (tf.float32, label_type)), shape, label_shape
                )
            )
            .prefetch(2)
            if val_steps
            else None  # no validation images (--val-split 0)
        )
        if self.val_data is not None:
            self.val_data = without_autotuning(self.val_data)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [_EpochCounter(self._epoch)]

    def checkpoints(self, run_dir: Path) -> ModelCheckpoints:
        return ModelCheckpoints(self.model, run_dir)

    def val_probabilities(self, model) -> np.ndarray | None:
        """Through the part of ``model`` above the cut, from the cached activations (when its layers
        below the cut are the ones they came from: a best epoch of an earlier stage of a schedule such
        as ``--unfreeze 5,1`` trained some of them)."""
        from scenecls.caches.activations import split_classifier
        from scenecls.classifier import find_backbone

        if not len(self._cached.val) or not _same_weights(model, self.model, self._cut.lower_layers):
            return None
        upper = self.trainer
        if model is not self.model:
            backbone = find_backbone(model)
            index = [layer.name for layer in backbone.layers].index(self._cut.layer)
            upper = split_classifier(model, backbone, index).upper
        return _predict_rows(upper, self._cached.val, self._cached.read)


def _same_weights(model, trained, layers) -> bool:
    """Whether ``model`` (the classifier to predict with) holds the very weights ``trained`` (the run's
    model, which the cache was built from) holds in ``layers`` (backbone layers, found by name)."""
    from scenecls.classifier import find_backbone

    if model is trained:
        return True
    try:
        backbone = find_backbone(model)
        theirs = [backbone.get_layer(layer.name).get_weights() for layer in layers]
    except ValueError:  # not the run's architecture
        return False
    ours = [layer.get_weights() for layer in layers]
    return all(
        len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        for a, b in zip(theirs, ours, strict=True)
    )


def _predict_rows(model, rows: np.ndarray, read, batch_size: int = 64) -> np.ndarray:
    """``model``'s float32 outputs on ``rows`` (cached features or activations, ``read`` into float32
    a batch at a time, so that a memory-mapped entry is never copied whole)."""
    from scenecls.classifier import inference_function

    forward = inference_function(model, batch_size, images=len(rows))
    batches = [forward(read(rows[at : at + batch_size])) for at in range(0, len(rows), batch_size)]
    return np.concatenate(batches)


def flip_half(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``batch`` (``(n, height, width, channels)`` maps) with a random half mirrored left-right."""
    mirrored = rng.random(len(batch)) < 0.5
    batch[mirrored] = batch[mirrored][:, :, ::-1]
    return batch


def crop_resize(batch: np.ndarray, rng: np.random.Generator, smallest: float = 0.8) -> np.ndarray:
    """``batch`` (``(n, height, width, channels)`` maps), each map a random window of ``smallest`` to
    all of its side, resampled bilinearly back to the whole size: a zoom and shift of the map."""
    n, height, width, _ = batch.shape
    scale = rng.uniform(smallest, 1.0, n)
    top = rng.uniform(0.0, 1.0, n) * (1.0 - scale) * height
    left = rng.uniform(0.0, 1.0, n) * (1.0 - scale) * width

    def grid(start: np.ndarray, size: int):
        at = np.clip(start[:, None] + (np.arange(size) + 0.5)[None, :] * scale[:, None] - 0.5, 0, size - 1)
        low = np.floor(at).astype(np.int64)
        return low, np.minimum(low + 1, size - 1), (at - low).astype(batch.dtype)

    y0, y1, wy = grid(top, height)
    x0, x1, wx = grid(left, width)
    rows = np.arange(n)[:, None, None]

    def pick(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return batch[rows, ys[:, :, None], xs[:, None, :]]

    wy, wx = wy[:, :, None, None], wx[:, None, :, None]
    return (pick(y0, x0) * (1 - wy) + pick(y1, x0) * wy) * (1 - wx) + (
        pick(y0, x1) * (1 - wy) + pick(y1, x1) * wy
    ) * wx


def _batch_of(pair, shape: tuple[int, ...], label_shape: tuple = (None,)):
    """Activations of a known shape and their labels (or target rows), from a ``numpy_function``'s output."""
    activations, labels = pair
    activations.set_shape((None, *shape))
    labels.set_shape(label_shape)
    return activations, labels


def image_source(learner: Learner) -> ImageSource:
    """The whole classifier on images: the source of every phase that does not run on cached features."""
    config, data, size = learner.context.config, learner.context.data, learner.context.size
    augment = build_augmentation(config.augment if config.augment else NO_AUGMENTATION, seed=config.seed)
    targets = learner.context.targets
    train_ds = make_dataset(
        data.train, (size, size), config.batch_size, shuffle=True, augment=augment, seed=config.seed,
        cache=config.cache_images, targets=targets,
    )  # fmt: skip
    val_ds = None  # no validation images (--val-split 0)
    if data.validated:
        val_ds = make_dataset(data.val, (size, size), config.batch_size, cache=config.cache_images)
        if targets is not None:  # soft targets: one-hot validation rows
            val_ds = one_hot_labels(val_ds, len(data.classes))
    if config.mixing.on:
        train_ds = mix_batches(train_ds, len(data.classes), config.mixing, seed=config.seed)
        if val_ds is not None:
            val_ds = one_hot_labels(val_ds, len(data.classes))
    return ImageSource(learner.model, train_ds, val_ds, steps=math.ceil(len(data.train) / config.batch_size))


def epoch_source(
    learner: Learner, policy: UnfreezePolicy, images: ImageSource
) -> tuple[EpochSource, str | None]:
    """``(source, cache)``: what the phase trains on, and whether its cache entry was ``built`` or
    ``reused`` (None: no cache).

    Unless ``--no-cache``: cached pooled features while the backbone is frozen; cached activations at the
    first unfrozen block while the last blocks are fine-tuned (not with ``--finetune-copies 0``, for
    ``--unfreeze all`` or raw layer counts, or with MixUp/CutMix, which mix images). Else the images
    through the whole classifier, freshly augmented every epoch.

    On a cluster the chief builds the cache entry while the others wait; they then read it (on a
    shared filesystem) or, not finding it, compute it for themselves without publishing it.
    """
    context, model, backbone = learner.context, learner.model, learner.backbone
    config, reporter = context.config, context.reporter
    distribution, run_dir = context.distribution, context.run_dir
    if not config.feature_cache:
        return images, None
    if policy.frozen:
        return _feature_source(learner)
    from scenecls.caches import activations

    cut = _cut_for(learner, policy)
    if cut is None:
        return images, None
    inputs = _cache_inputs(context, config.finetune_copies)

    def cached(root: Path, build: bool):
        fresh, learner.built_activations = learner.built_activations, None
        if fresh is not None and fresh.key == activations.cache_key(backbone, cut, inputs)[0]:
            return fresh  # built by the head phase, in the pass that made its features
        try:
            return activations.load_or_build(
                cut, backbone, inputs, cache_root=root, reporter=reporter, build=build
            )
        except activations.CacheUnavailable as exc:
            reporter.warn(f"{exc}; fine-tuning on images instead")
            return None

    if distribution.chief:
        entry = cached(cache_dir(), build=True)
        distribution.barrier()
    else:
        distribution.barrier()
        entry = cached(cache_dir(), build=False) or cached(run_dir or cache_dir(), build=True)
    if entry is None:
        return images, None
    source = CutPointSource(
        model, cut, entry, batch_size=config.batch_size, seed=config.seed, map_aug=config.finetune_map_aug,
        targets=context.targets,
    )  # fmt: skip
    return source, "reused" if entry.reused else "built"


def _feature_source(learner: Learner) -> tuple[EpochSource, str]:
    from scenecls.caches.features import load_or_compute

    context, model, backbone = learner.context, learner.model, learner.backbone
    config, reporter = context.config, context.reporter
    distribution = context.distribution

    inputs = _cache_inputs(context, config.cache_aug)

    def features(publish: bool):
        return load_or_compute(
            model, backbone, inputs, cache_root=cache_dir(), reporter=reporter, publish=publish, mmap=True
        )

    if distribution.chief:
        cached = _with_activations(learner, inputs) or features(publish=True)
        distribution.barrier()
    else:
        distribution.barrier()
        cached = features(publish=False)
    source = FeatureSource(
        model, cached, batch_size=config.batch_size, seed=config.seed, mixing=config.mixing,
        targets=context.targets,
    )  # fmt: skip
    return source, "reused" if cached.reused else "built"


def _with_activations(learner: Learner, inputs: CacheInputs) -> CachedFeatures | None:
    """The head phase's features, built in one pass over the images with the activations the
    fine-tuning phase will train on (kept on the learner for it; see :mod:`scenecls.caches.one_pass`);
    None when that phase will not use the activation cache or the joint pass does not apply.

    Not on a cluster: the copies' augmentation layers hold variables, and making a variable there is a
    collective operation that the other processes, waiting for the chief's features, would not join.
    """
    from scenecls.caches import one_pass

    context, config = learner.context, learner.context.config
    policy = next((phase.policy for phase in context.phases if not phase.policy.frozen), None)
    cut = _cut_for(learner, policy) if policy is not None and not context.distribution.strategy else None
    if cut is None:
        return None
    built = one_pass.build_both(
        learner.backbone, cut, inputs, _cache_inputs(context, config.finetune_copies), cache_root=cache_dir(),
        reporter=context.reporter,
    )  # fmt: skip
    if built is None:
        return None
    learner.built_activations = built[1]
    return built[0]


def _cut_for(learner: Learner, policy: UnfreezePolicy) -> CutModels | None:
    """The classifier split where ``policy``'s fine-tuning starts, when that phase trains on cached
    activations; None when it trains on images (``--finetune-copies 0``, MixUp/CutMix, which mix images,
    or a policy that has no block to cut at, as ``--unfreeze all`` or raw layer counts)."""
    from scenecls.caches import activations

    config = learner.context.config
    if config.mixing.on or not config.finetune_copies:
        return None
    index = activations.cut_index(learner.block_map, policy)
    return None if index is None else activations.split_classifier(learner.model, learner.backbone, index)


def _cache_inputs(context: RunContext, copies: int) -> CacheInputs:
    """What a cache entry of this run is computed from; its augmentation layers are made here, up front
    (see :func:`~scenecls.data.augment.augmented_copies`)."""
    config, data, size = context.config, context.data, context.size
    augmentations = augmented_copies(config.augment, copies, config.seed + 1)
    return CacheInputs(
        data.train,
        data.val,
        (size, size),
        config.batch_size,
        config.augment,
        copies,
        config.seed,
        augmentations,
        config.cache_runtime,
    )
