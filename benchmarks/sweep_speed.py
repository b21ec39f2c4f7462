"""A whole sweep end to end, fine-tuning on cached activations (the default) against on images.

Run: python benchmarks/sweep_speed.py [--data intel-mini] [--weights PATH] [--dense 0,1,2,3]
                                      [--unfreeze 0,1,3,5] [--epochs 10] [--finetune-epochs 10]

Runs `scenecls sweep --backbones mobilenet_v2 --dense ... --unfreeze ...` twice in fresh processes, each
with an empty cache folder of its own: once with `--finetune-copies 0` (every fine-tuning epoch on
images, freshly augmented) and once with the defaults (fine-tuning on the activation cache). Prints
the wall time of each sweep, its fine-tuning phases' total, the caches' disk use, and each run's test
accuracy side by side. `--data` is intel-mini (default, unpacked from ../shared), intel-dev or a folder;
`--weights` defaults to the shared real MobileNetV2 weights (random weights when they are absent).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import SHARED_WEIGHTS, folder_bytes, machine, named_dataset, run_scenecls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="intel-mini")
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else "none")
    parser.add_argument("--dense", default="0,1,2,3")
    parser.add_argument("--unfreeze", default="0,1,3,5")
    parser.add_argument("--epochs", default="10")
    parser.add_argument("--finetune-epochs", default="10")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="scenecls-sweep-speed-"))
    data = named_dataset(args.data, work)
    print(f"data: {args.data}; weights: {args.weights}; machine: {machine()}")
    grid = ["--backbones", "mobilenet_v2", "--dense", args.dense, "--unfreeze", args.unfreeze]
    common = [*grid, "--data", str(data), "--weights", args.weights, "--epochs", args.epochs,
              "--finetune-epochs", args.finetune_epochs, "--format", "json"]  # fmt: skip
    results = {}
    for label, extra in (("images", ["--finetune-copies", "0"]), ("activation cache", [])):
        home = work / label.replace(" ", "-")
        start = time.perf_counter()
        rows = json.loads(run_scenecls(["sweep", *common, *extra, "--project", str(home / "runs")], home))
        seconds = time.perf_counter() - start
        finetune = 0.0
        for row in rows:
            metrics = json.loads((home / "runs" / "sweep" / row["run"] / "metrics.json").read_text())
            finetune += sum(v for k, v in metrics["phase_seconds"].items() if k != "head")
        disk = folder_bytes(home / "cache" / "activations")
        results[label] = (seconds, finetune, {r["run"]: r["test_accuracy"] for r in rows})
        print(f"{label:17s}: {len(rows)} runs in {seconds:.0f} s (fine-tuning phases {finetune:.0f} s); "
              f"activation cache on disk {disk / 2**20:.0f} MB", flush=True)  # fmt: skip
    (images, images_ft, before), (cached, cached_ft, after) = results.values()
    print(f"speed-up: whole sweep {images / cached:.2f}x, fine-tuning phases {images_ft / cached_ft:.2f}x")
    print("| run | test accuracy, images | test accuracy, activation cache |")
    print("|---|---|---|")
    for name in before:
        print(f"| {name} | {before[name]:.4f} | {after[name]:.4f} |")


if __name__ == "__main__":
    main()
