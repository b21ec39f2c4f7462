"""A frozen pass on TensorFlow and on LiteRT, per backbone: what ``--cache-runtime litert`` gains.

Run: python benchmarks/frozen_pass.py [--backbones mobilenet_v2,xception,...] [--size 150] [--unfreeze 5]

For each backbone (random weights: the speed does not depend on them) it times, on batches of 32 random
images after a warm-up, the two frozen passes a default run's caches make: the *lower* part below the
default fine-tuning cut (the activation cache) and the backbone up to its pooled *features* (the feature
cache). Each runs batch normalisation folded, as one traced TensorFlow function (what
``scenecls.classifier.inference_function`` runs) and as a LiteRT model on every usable core (what
``scenecls.frozen_pass.litert_function`` runs), with the seconds converting took, the largest difference
between the two outputs relative to the largest output, and from how many images converting pays
(the conversion's seconds over the seconds LiteRT saves per image). ``docs/caches.md`` quotes these
figures.
"""

from __future__ import annotations

import argparse
import time

from _common import machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--backbones",
        default="mobilenet_v2,xception,inception_resnet_v2,efficientnetv2_b0,resnet50_v2,convnext_tiny",
    )
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--unfreeze", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import keras
    import numpy as np

    from scenecls.caches.activations import cut_index, split_classifier
    from scenecls.caches.features import feature_model
    from scenecls.classifier import build_classifier, find_backbone, inference_function
    from scenecls.frozen_pass import LiteRTUnavailable, litert_function
    from scenecls.heads import HeadConfig
    from scenecls.models.folding import for_inference
    from scenecls.models.registry import get_spec
    from scenecls.unfreeze import UnfreezePolicy

    print(f"{args.size} px, batch {args.batch}, --unfreeze {args.unfreeze}; machine: {machine()}")
    print("| backbone | pass | output | TensorFlow img/s | LiteRT img/s | ratio | converting s "
          "| pays from (images) | largest difference |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    images = (
        np.random.default_rng(0).uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32)
    )
    for name in args.backbones.split(","):
        keras.backend.clear_session()
        model = build_classifier(name, 6, size=args.size, weights="none", head=HeadConfig())
        backbone = find_backbone(model)
        index = cut_index(get_spec(name).block_map(backbone), UnfreezePolicy("blocks", args.unfreeze))
        for part, frozen in (
            ("lower", split_classifier(model, backbone, index).lower),
            ("features", feature_model(model)),
        ):
            folded = for_inference(frozen)
            on_tensorflow = inference_function(folded, args.batch)
            started = time.perf_counter()
            try:
                on_litert = litert_function(folded, args.batch)
            except LiteRTUnavailable:
                on_litert = None
            converting = time.perf_counter() - started
            tf_rate = _rate(on_tensorflow, images)
            shape = "x".join(str(d) for d in frozen.output.shape[1:])
            if on_litert is None:
                print(
                    f"| {name} | {part} | {shape} | {tf_rate:.0f} | (does not convert) | | | | |", flush=True
                )
                continue
            lite_rate = _rate(on_litert, images)
            expected = on_tensorflow(images)
            difference = float(np.abs(on_litert(images) - expected).max() / np.abs(expected).max())
            saved = 1 / tf_rate - 1 / lite_rate
            pays = f"{converting / saved:,.0f}" if saved > 0 else "never"
            ratio = lite_rate / tf_rate
            print(f"| {name} | {part} | {shape} | {tf_rate:.0f} | {lite_rate:.0f} | {ratio:.2f}x "
                  f"| {converting:.1f} | {pays} | {difference:.1e} |", flush=True)  # fmt: skip


def _rate(forward, images, warmup: int = 2, steps: int = 8) -> float:
    for _ in range(warmup):
        forward(images)
    started = time.perf_counter()
    for _ in range(steps):
        forward(images)
    return len(images) * steps / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
