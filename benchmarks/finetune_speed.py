"""How much of a fine-tuning step is the frozen lower backbone: the bound on a cut-point activation cache.

Run: python benchmarks/finetune_speed.py [--backbone mobilenet_v2] [--size 150] [--unfreeze 1,3,5]

For each `--unfreeze N` the classifier (random weights, 3 dense layers) is split where its first
unfrozen block begins, at a single tensor (the block map's cut): *lower* (frozen) and *upper* (the
unfrozen blocks and the head, sharing the classifier's layers). On random batches of 32 it times, after
warm-up, in images per second:

* the whole classifier's train step with the last N blocks trainable (what fine-tuning runs today);
* the upper part's train step on cut-point activations (what each epoch would run with the cache);
* the lower part's forward pass (what building the cache costs, once per image and copy), as the model
  is and with its batch normalisation folded into the convolutions (as the cache builds it).

The bound for E epochs with a cold cache is E x full / (lower + E x upper), in seconds per image; the
decode and augmentation a cache also saves are not in it.
"""

from __future__ import annotations

import argparse

from _common import machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--unfreeze", default="1,3,5")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from scenecls.classifier import build_classifier, find_backbone
    from scenecls.heads import HeadConfig
    from scenecls.models.folding import fold_batchnorm
    from scenecls.models.registry import get_spec
    from scenecls.unfreeze import UnfreezePolicy, apply_unfreeze

    print(f"{args.backbone}, {args.size} px, batch {args.batch}; machine: {machine()}")
    print(
        "| unfreeze | cut at | cut tensor | full step img/s | upper step img/s | lower forward img/s "
        "| lower, batch norm folded | bound, warm cache | bound, cold cache, 10 epochs | the same, folded |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 6, args.batch))
    for n in [int(v) for v in args.unfreeze.split(",")]:
        keras.backend.clear_session()
        model = build_classifier(args.backbone, 6, size=args.size, weights="none", head=HeadConfig())
        backbone = find_backbone(model)
        blocks = get_spec(args.backbone).block_map(backbone)
        apply_unfreeze(backbone, blocks, UnfreezePolicy("blocks", n), model=model)
        first = blocks.last(n)[0]
        cut_layer = backbone.layers[first.start - 1]
        cut = cut_layer.output
        upper_backbone = keras.Model(cut, backbone.output)
        inputs = keras.Input(tuple(cut.shape[1:]))
        x = upper_backbone(inputs)
        for layer in model.layers[model.layers.index(backbone) + 1 :]:
            x = layer(x)
        upper = keras.Model(inputs, x)
        preprocess = model.layers[model.layers.index(backbone) - 1].output
        lower = keras.Model(model.input, keras.Model(backbone.input, cut)(preprocess))

        full_rate = _train_rate(model, images, labels)
        activations = lower(images, training=False)
        upper_rate = _train_rate(upper, activations, labels)
        lower_rate = _forward_rate(lower, images)
        folded_rate = _forward_rate(fold_batchnorm(lower), images)
        warm = upper_rate / full_rate

        e = args.epochs
        cold, cold_folded = (e / full_rate / (1 / r + e / upper_rate) for r in (lower_rate, folded_rate))
        shape = "x".join(map(str, cut.shape[1:]))
        print(f"| {n} | {first.name} | {shape} | {full_rate:.0f} | {upper_rate:.0f} | {lower_rate:.0f} "
              f"| {folded_rate:.0f} | {warm:.2f}x | {cold:.2f}x | {cold_folded:.2f}x |",
              flush=True)  # fmt: skip


def _train_rate(model, x, y, warmup: int = 3, steps: int = 12) -> float:
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(1e-4)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return _rate(lambda: step(x, y), len(x), warmup, steps)


def _forward_rate(model, x, warmup: int = 3, steps: int = 12) -> float:
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False))
    return _rate(lambda: forward(x), len(x), warmup, steps)


def _rate(run, batch: int, warmup: int, steps: int) -> float:
    import time

    for _ in range(warmup):
        run().numpy()
    start = time.perf_counter()
    for _ in range(steps):
        run().numpy()
    return batch * steps / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
