"""How many images per second the input pipeline delivers at 150x150 (decode + resize + augment).

Run: python benchmarks/pipeline_throughput.py [--epochs 3] [--batch 32]
The backbone it must keep ahead of: MobileNetV2's forward pass, about 270 img/s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

from _common import dataset, machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    from scenecls.data.augment import AugmentConfig, build_augmentation
    from scenecls.data.pipeline import make_dataset, prepare_data

    root, source = dataset()
    data = prepare_data(root)
    print(f"data: {source}, {len(data.train)} training images; machine: {machine()}")
    for label, augment in (
        ("decode + resize", None),
        ("decode + resize + augment", build_augmentation(AugmentConfig(), seed=0)),
    ):
        ds = make_dataset(data.train, (150, 150), args.batch, shuffle=True, augment=augment)
        for _ in ds.take(2):
            pass  # warm-up: tracing and thread pools
        start, count = time.perf_counter(), 0
        for _ in range(args.epochs):
            for images, _labels in ds:
                count += int(images.shape[0])
        seconds = time.perf_counter() - start
        print(f"{label:28s} {count / seconds:8.0f} img/s  ({count} images in {seconds:.1f} s)")


if __name__ == "__main__":
    main()
