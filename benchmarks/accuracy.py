"""Validation and held-out accuracy of heads with 0-3 dense layers on real images.

Run: python benchmarks/accuracy.py [--backbone mobilenet_v2] [--size 150] [--epochs 10] [--compare-cache]
Uses ImageNet weights when Keras has them cached, random weights otherwise (and says so: random
MobileNetV2 features carry almost no signal, ConvNeXt's some). With --compare-cache each head is
trained twice, with the feature cache (images as they are) and without it (fresh augmentation every
epoch), to show what the cache costs in accuracy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import dataset, machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dense", default="0,1,2,3")
    parser.add_argument("--compare-cache", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="scenecls-accuracy-"))
    os.environ.setdefault("SCENECLS_HOME", str(work / "home"))
    from scenecls.config import TrainConfig
    from scenecls.models.registry import cached_weights, get_spec
    from scenecls.training.phases import train

    root, source = dataset(work)
    weights = "imagenet" if cached_weights(get_spec(args.backbone), args.size) else "none"
    print(
        f"data: {source}; {args.backbone} at {args.size}px, weights {weights}, {args.epochs} head epochs, "
        f"backbone frozen; machine: {machine()}"
    )
    print(f"{'dense':>5} {'cache':>6} {'val acc':>8} {'test acc':>9} {'seconds':>8}")
    for dense in [int(d) for d in args.dense.split(",")]:
        for cache in (True, False) if args.compare_cache else (True,):
            config = TrainConfig(
                data=str(root), backbone=args.backbone, weights=weights, image_size=args.size, dense=dense,
                epochs=args.epochs, unfreeze="0", finetune_epochs=0, feature_cache=cache,
            )  # fmt: skip
            run_dir = work / "runs" / f"d{dense}-{'cache' if cache else 'live'}"
            run_dir.mkdir(parents=True)
            start = time.perf_counter()
            result = train(config, run_dir)
            print(
                f"{dense:>5} {'on' if cache else 'off':>6} {result.best_val_accuracy:8.4f} "
                f"{result.test_accuracy or 0:9.4f} {time.perf_counter() - start:8.1f}"
            )


if __name__ == "__main__":
    main()
