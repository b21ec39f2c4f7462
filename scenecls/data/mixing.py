"""MixUp and CutMix: batch-level augmentation that blends pairs of training examples and their labels.

MixUp (Zhang et al. 2018) takes ``lam * a + (1 - lam) * b`` of two images and of their one-hot labels;
CutMix (Yun et al. 2019) pastes a box of ``b`` into ``a``, with the labels weighted by the areas. Each
example is paired with another of the same batch (a random permutation), and ``lam`` is drawn per
example from Beta(alpha, alpha). With both on, each batch uses one of the two, chosen at random.

Labels become soft (one-hot rows mixed), so a phase that mixes feeds one-hot labels everywhere,
validation included, and the loss takes either kind (:mod:`scenecls.losses`). The random numbers are
stateless, drawn from a seeded stream that differs every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mixing:
    mixup: float = 0.0  # Beta(alpha, alpha) for MixUp; 0: off
    cutmix: float = 0.0  # the same for CutMix; 0: off

    @property
    def on(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


def one_hot_labels(dataset, num_classes: int):
    """``(x, integer labels)`` batches as ``(x, one-hot float labels)``."""
    return dataset.map(lambda x, y: (x, _one_hot(y, num_classes)))


def _one_hot(labels, num_classes: int):
    import tensorflow as tf

    return tf.one_hot(tf.cast(labels, tf.int32), num_classes)


def mix_batches(dataset, num_classes: int, mixing: Mixing, *, seed: int, images: bool = True):
    """Mixed ``(x, soft labels)`` batches from ``(x, integer labels)`` ones.

    ``images=False`` for feature vectors (the feature cache): MixUp applies to them as to images,
    CutMix does not (a vector has no boxes), so only MixUp is used there.
    """
    import tensorflow as tf

    use_cutmix = mixing.cutmix > 0 and images
    if not (mixing.mixup > 0 or use_cutmix):
        return one_hot_labels(dataset, num_classes)
    # Two seeds per batch, fresh every epoch.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def mix(batch, draws):
        x, y = batch
        y = _one_hot(y, num_classes)
        seed_pair = tf.stack([draws[0], draws[1]])
        if mixing.mixup > 0 and use_cutmix:  # one of the two, at random
            return tf.cond(
                tf.random.stateless_uniform([], seed_pair + 1) < 0.5,
                lambda: _cutmix(x, y, mixing.cutmix, seed_pair),
                lambda: _mixup(x, y, mixing.mixup, seed_pair),
            )
        if use_cutmix:
            return _cutmix(x, y, mixing.cutmix, seed_pair)
        return _mixup(x, y, mixing.mixup, seed_pair)

    return tf.data.Dataset.zip((dataset, seeds)).map(mix)


def _beta(shape, alpha: float, seed):
    """Beta(alpha, alpha) as the ratio of two gamma draws (TensorFlow has no stateless beta)."""
    import tensorflow as tf

    a = tf.random.stateless_gamma(shape, seed=seed + 2, alpha=alpha)
    b = tf.random.stateless_gamma(shape, seed=seed + 3, alpha=alpha)
    return a / tf.maximum(a + b, 1e-12)


def _partners(batch_size, seed):
    import tensorflow as tf

    return tf.argsort(tf.random.stateless_uniform([batch_size], seed=seed + 4))


def _mixup(x, y, alpha: float, seed):
    import tensorflow as tf

    n = tf.shape(x)[0]
    lam = _beta([n], alpha, seed)
    order = _partners(n, seed)
    lam_x = tf.cast(tf.reshape(lam, [-1] + [1] * (len(x.shape) - 1)), x.dtype)
    mixed = lam_x * x + (1.0 - lam_x) * tf.gather(x, order)
    labels = lam[:, None] * y + (1.0 - lam[:, None]) * tf.gather(y, order)
    return mixed, labels


def _cutmix(x, y, alpha: float, seed):
    """Per example a box of ``sqrt(1 - lam)`` of each side, centred anywhere (clipped at the edges);
    the label weights follow the box's area as pasted."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    lam = _beta([n], alpha, seed)
    order = _partners(n, seed)
    side = tf.sqrt(1.0 - lam)
    centre = tf.random.stateless_uniform([n, 2], seed=seed + 5)
    top = tf.clip_by_value(centre[:, 0] * h - side * h / 2, 0.0, h)
    bottom = tf.clip_by_value(centre[:, 0] * h + side * h / 2, 0.0, h)
    left = tf.clip_by_value(centre[:, 1] * w - side * w / 2, 0.0, w)
    right = tf.clip_by_value(centre[:, 1] * w + side * w / 2, 0.0, w)
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None] + 0.5
    cols = tf.cast(tf.range(width), tf.float32)[None, None, :] + 0.5
    inside = (
        (rows >= top[:, None, None])
        & (rows < bottom[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < right[:, None, None])
    )
    mask = tf.cast(inside, x.dtype)[..., None]  # 1 where the partner's pixels go
    mixed = x * (1.0 - mask) + tf.gather(x, order) * mask
    kept = 1.0 - tf.reduce_mean(tf.cast(inside, tf.float32), axis=[1, 2])  # the exact area kept
    labels = kept[:, None] * y + (1.0 - kept[:, None]) * tf.gather(y, order)
    return mixed, labels
