"""Start-up: seconds from the command to its first training batch, with empty caches and with built ones.

Each run is `scenecls -q train` in a fresh process (one epoch of the head, nothing after it that the
figure waits for); the run's `metrics.json` records `first_batch_seconds`, measured from the process's
own start, so Python's start-up and the imports are in it. The first run fills an empty SCENECLS_HOME
(the scan and the feature pass are in its wait); the others find the caches built, which is the wait a
user sees on every run after the first.

Run: python benchmarks/first_batch.py [--data intel-dev] [--repeat 3] [--backbone B --weights FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import SHARED_WEIGHTS, machine, named_dataset, run_scenecls


def one_run(data: Path, home: Path, project: Path, name: str, options: list[str]) -> tuple[float, float]:
    """(seconds to the first batch, seconds of the whole command) of one fresh process."""
    args = ["train", "--data", str(data), *options, "--epochs", "1", "--finetune-epochs", "0", "--no-export",
            "--project", str(project), "--name", name, "--format", "json"]  # fmt: skip
    start = time.perf_counter()
    run_scenecls(args, home)
    wall = time.perf_counter() - start
    metrics = json.loads((project / name / "metrics.json").read_text())
    return metrics["first_batch_seconds"], wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="intel-dev", help="a data-set folder, or intel-mini/intel-dev")
    parser.add_argument("--repeat", type=int, default=3, help="runs with the caches built")
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else "imagenet")
    parser.add_argument("--backbone", default="mobilenet_v2", help="the shared weights are MobileNetV2's")
    args = parser.parse_args()
    options = ["--backbone", args.backbone, "--weights", args.weights]
    work = Path(tempfile.mkdtemp(prefix="scenecls-first-batch-"))
    data = named_dataset(args.data, work)
    home, project = work / "home", work / "runs"
    print(f"machine: {machine()}; data: {data.name}; {args.backbone}, weights: {Path(args.weights).name}")
    print("runs: `scenecls -q train --epochs 1 --finetune-epochs 0 --no-export`, one process each")
    cold = one_run(data, home, project, "cold", options)
    warm = [one_run(data, home, project, f"warm{i}", options) for i in range(args.repeat)]
    print(f"{'caches':<28}{'first batch':>12}{'command':>10}")
    print(f"{'empty (first run)':<28}{cold[0]:>11.2f}s{cold[1]:>9.1f}s")
    first = [w[0] for w in warm]
    print(
        f"{f'built (median of {len(warm)})':<28}{statistics.median(first):>11.2f}s"
        f"{statistics.median(w[1] for w in warm):>9.1f}s   (range {min(first):.2f}-{max(first):.2f}s)"
    )
    print(f"work folder (delete when done): {work}")


if __name__ == "__main__":
    main()
