"""Phase 1 (frozen backbone) with the feature cache vs without: same data, same epochs, one run each.

Run: python benchmarks/feature_cache.py [--backbone mobilenet_v2] [--epochs 10] [--size 150] [--repeats 3]
Prints the seconds of each and the ratios. A cold cache is built inside the measured time (the cache
folder is emptied before each cold run); a warm one is reused from an earlier run, as every dense
variant of a sweep reuses it. Cached runs are short and the machine's speed varies, so they are
repeated and the median is used.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import dataset, machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each cached variant (median)")
    args = parser.parse_args()

    import os

    work = Path(tempfile.mkdtemp(prefix="scenecls-cache-bench-"))
    os.environ["SCENECLS_HOME"] = str(work / "home")  # a cold cache, not the user's
    from scenecls.config import TrainConfig
    from scenecls.training.loop import train

    root, source = dataset(work)
    print(
        f"data: {source}; backbone {args.backbone} (random weights), {args.size}px, {args.epochs} epochs, "
        f"machine: {machine()}"
    )
    from scenecls.paths import cache_dir

    runs = [("without cache", False)] + [
        ("with cache (cold)", True),
        ("with cache (warm)", True),
    ] * args.repeats
    times: dict[str, list[float]] = {}
    phases: dict[str, list[float]] = {}
    for n, (label, cache) in enumerate(runs):
        if label.endswith("(cold)"):
            shutil.rmtree(cache_dir() / "features", ignore_errors=True)
        config = TrainConfig(
            data=str(root), backbone=args.backbone, weights="none", image_size=args.size, epochs=args.epochs,
            unfreeze="0", finetune_epochs=0, feature_cache=cache,
        )  # fmt: skip
        run_dir = work / "runs" / str(n)
        run_dir.mkdir(parents=True)
        start = time.perf_counter()
        result = train(config, run_dir)
        times.setdefault(label, []).append(time.perf_counter() - start)
        phases.setdefault(label, []).append(
            json.loads((run_dir / "metrics.json").read_text())["phase_seconds"]["head"]
        )
        print(
            f"{label:20s} phase 1 {phases[label][-1]:7.1f} s (whole run {times[label][-1]:6.1f} s), "
            f"best val accuracy {result.best_val_accuracy:.4f}"
        )
    for name, table in (("phase 1", phases), ("whole run", times)):
        median = {label: statistics.median(values) for label, values in table.items()}
        base, cold, warm = median["without cache"], median["with cache (cold)"], median["with cache (warm)"]
        print(
            f"{name}: without cache {base:.1f} s; median cold cache {cold:.1f} s ({base / cold:.1f}x), "
            f"median warm cache {warm:.1f} s ({base / warm:.1f}x)"
        )


if __name__ == "__main__":
    main()
