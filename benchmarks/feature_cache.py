"""Phase 1 (frozen backbone) with the feature cache vs without: same data, same epochs, one run each.

Run: python benchmarks/feature_cache.py [--backbone mobilenet_v2] [--epochs 10] [--size 150]
Prints the seconds of each and the ratio; the cache is cold for the first cached run (it is built
inside the measured time) and warm for the second (another run reusing it, as in a sweep).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import dataset, machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=150)
    args = parser.parse_args()

    import os

    work = Path(tempfile.mkdtemp(prefix="scenecls-cache-bench-"))
    os.environ["SCENECLS_HOME"] = str(work / "home")  # a cold cache, not the user's
    from scenecls.config import TrainConfig
    from scenecls.training.phases import train

    root, source = dataset(work)
    print(
        f"data: {source}; backbone {args.backbone} (random weights), {args.size}px, {args.epochs} epochs, "
        f"machine: {machine()}"
    )
    times, phases = {}, {}
    for label, cache in (("without cache", False), ("with cache (cold)", True), ("with cache (warm)", True)):
        config = TrainConfig(
            data=str(root), backbone=args.backbone, weights="none", image_size=args.size, epochs=args.epochs,
            unfreeze="0", finetune_epochs=0, feature_cache=cache,
        )  # fmt: skip
        run_dir = work / "runs" / label.replace(" ", "-").replace("(", "").replace(")", "")
        run_dir.mkdir(parents=True)
        start = time.perf_counter()
        result = train(config, run_dir)
        times[label] = time.perf_counter() - start
        phases[label] = json.loads((run_dir / "metrics.json").read_text())["phase_seconds"]["head"]
        print(
            f"{label:20s} phase 1 {phases[label]:7.1f} s (whole run {times[label]:6.1f} s), "
            f"best val accuracy {result.best_val_accuracy:.4f}"
        )
    for name, table in (("phase 1", phases), ("whole run", times)):
        base = table["without cache"]
        print(
            f"speed-up of the {name}: cold cache {base / table['with cache (cold)']:.1f}x, "
            f"warm cache {base / table['with cache (warm)']:.1f}x"
        )


if __name__ == "__main__":
    main()
