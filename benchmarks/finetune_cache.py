"""Fine-tuning on the activation cache against fine-tuning on images, end to end, as a user runs it.

Run: python benchmarks/finetune_cache.py [--data intel-dev] [--weights PATH] [--backbone mobilenet_v2]
                                         [--image-size N] [--unfreeze 5,1] [--epochs 10]
                                         [--finetune-epochs 10] [--seed 0]

For each `--unfreeze N` it runs `scenecls train` twice in fresh processes, side by side: once with
`--finetune-copies 0` (every fine-tuning epoch on images, freshly augmented: the way before the cache)
and once with the defaults (fine-tuning on cached activations, the cache built cold: every run has an
empty cache folder of its own, so the build is in the figure). It prints the fine-tuning phase's wall
time (from the run's `metrics.json`: building the cache included), the speed-up, each run's test
accuracy, the activation cache's size on disk and each process's peak resident memory. `--data` is
intel-dev (default, unpacked from ../shared), intel-mini, or a folder; `--weights` defaults to the shared
real MobileNetV2 weights (`none` for the other backbones: speed only).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import SHARED_WEIGHTS, folder_bytes, machine, named_dataset, run_scenecls_peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="intel-dev")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--image-size", default=None)
    parser.add_argument("--unfreeze", default="5,1")
    parser.add_argument("--epochs", default="10")
    parser.add_argument("--finetune-epochs", default="10")
    parser.add_argument("--seed", default="0")
    args = parser.parse_args()
    weights = args.weights or (
        str(SHARED_WEIGHTS) if args.backbone == "mobilenet_v2" and SHARED_WEIGHTS.is_file() else "none"
    )

    work = Path(tempfile.mkdtemp(prefix="scenecls-finetune-cache-"))
    data = named_dataset(args.data, work)
    print(f"data: {args.data}; backbone: {args.backbone}; weights: {weights}; seed {args.seed}; "
          f"machine: {machine()}")  # fmt: skip
    common = ["train", "--data", str(data), "--backbone", args.backbone, "--weights", weights,
              "--epochs", args.epochs, "--finetune-epochs", args.finetune_epochs, "--seed", args.seed,
              "--no-export", "--format", "json"]  # fmt: skip
    if args.image_size:
        common += ["--image-size", args.image_size]
    print("| unfreeze | fine-tuning on images | on the activation cache (cold) | speed-up | test acc. images "
          "| test acc. cache | cache on disk | peak memory images / cache |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for n in [v.strip() for v in args.unfreeze.split(",")]:
        results = {}
        for label, extra in (("images", ["--finetune-copies", "0"]), ("cache", [])):
            home = work / f"u{n}-{label}"
            project = home / "runs"
            args = [*common, "--unfreeze", n, *extra, "--project", str(project)]
            out, peak, _ = run_scenecls_peak(args, home)
            result = json.loads(out)
            metrics = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
            finetune = sum(v for k, v in metrics["phase_seconds"].items() if k != "head")
            results[label] = (
                finetune,
                result["test_accuracy"],
                peak,
                folder_bytes(home / "cache" / "activations"),
            )
        (images, images_test, images_peak, _), (cached, cached_test, cached_peak, disk) = results.values()
        print(f"| {n} | {images:.0f} s | {cached:.0f} s | {images / cached:.2f}x | {images_test:.4f} "
              f"| {cached_test:.4f} | {disk / 2**20:.0f} MB | {images_peak / 2**20:.0f} / "
              f"{cached_peak / 2**20:.0f} MB |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
