"""`predict` throughput on a folder of images vs the raw forward pass and vs a naive loop.

Run: python benchmarks/predict_throughput.py [--backbone mobilenet_v2] [--size 150] [--naive 60]
- raw forward: the model on tensors already decoded and resized, batch after batch, through Keras's
  predict_on_batch, as one traced function, and as one traced function of the model with its batch
  normalisation folded into the convolutions (what predict runs; the ceiling);
- predict: scenecls.predict.predict_files on the image files (decode, resize, batch, infer);
- naive: for each file, load it and call model.predict on a batch of one (what a first script does).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import dataset, machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--naive", type=int, default=60, help="images for the naive loop (it is slow)")
    args = parser.parse_args()

    from scenecls.classifier import build_classifier, inference_function
    from scenecls.data.images import load_rgb
    from scenecls.models.folding import for_inference
    from scenecls.predict import expand_inputs, predict_files
    from scenecls.runtimes import KerasRuntime

    root, source = dataset()
    inputs = expand_inputs([str(root / "train")])
    paths = [p for p, _ in inputs]
    model = build_classifier(args.backbone, 6, size=args.size, weights=None)
    classes = [f"c{i}" for i in range(6)]
    size = (args.size, args.size)
    print(f"data: {source}, {len(paths)} images; {args.backbone} at {args.size}px, batch {args.batch}")
    print(f"machine: {machine()}")

    images = np.stack([load_rgb(p, size) for p in paths]).astype(np.float32)
    done = (len(images) // args.batch) * args.batch

    def raw_forward(forward) -> float:
        forward(images[: args.batch])  # trace once
        start = time.perf_counter()
        for i in range(0, done, args.batch):
            np.asarray(forward(images[i : i + args.batch]))
        return done / (time.perf_counter() - start)

    keras_raw = raw_forward(model.predict_on_batch)
    raw = raw_forward(inference_function(model, args.batch))
    folded = raw_forward(inference_function(for_inference(model), args.batch))

    runtime = KerasRuntime.of(model, args.batch)
    list(predict_files(runtime, inputs[: args.batch], classes, batch_size=args.batch))  # warm-up
    start = time.perf_counter()
    rows = list(predict_files(runtime, inputs, classes, batch_size=args.batch))
    ours = len(rows) / (time.perf_counter() - start)

    subset = paths[: args.naive]
    model.predict(images[:1], verbose=0)
    start = time.perf_counter()
    for path in subset:
        model.predict(load_rgb(path, size)[None].astype(np.float32), verbose=0)
    naive = len(subset) / (time.perf_counter() - start)

    print(f"raw forward, predict_on_batch   {keras_raw:8.1f} img/s")
    print(f"raw forward, traced function    {raw:8.1f} img/s")
    print(f"raw forward, traced, BN folded  {folded:8.1f} img/s  (what predict runs; the ceiling)")
    print(f"scenecls predict on files       {ours:8.1f} img/s  ({ours / folded:.0%} of the folded forward)")
    print(f"naive one-at-a-time loop        {naive:8.1f} img/s  (predict is {ours / naive:.0f}x faster)")


if __name__ == "__main__":
    main()
