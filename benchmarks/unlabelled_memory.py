"""Peak memory of a student as its unlabelled folder grows: bounded, or growing with the images?

Run: python benchmarks/unlabelled_memory.py --work DIR [--counts 1000,10000,100000]

A labelled set of 6 x 30 generated 32-pixel images, a tiny teacher trained on it (MobileNetV2 without
ImageNet weights, 32-pixel inputs, one head epoch), then for each count N a student:
``scenecls train --unlabelled <N generated images> --teacher <it>`` with one head epoch and one fine-tuning
epoch of the last block, soft targets (every unlabelled image is a row), in a fresh process and a fresh
SCENECLS_HOME (DIR/home-N-<time>), so that each run computes the teacher's targets and builds its
feature and activation caches over all its rows. The table gives each run's peak resident memory, the
peak of its anonymous part (what the system cannot take back: resident memory also counts the touched
pages of the memory-mapped caches, which it can), its seconds and what its caches hold on disk.
Weights and input size are tiny on purpose: the figure is what the student's own bookkeeping costs per
image (lists of paths, targets, cache rows), which a larger model does not change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import folder_bytes, generated, machine, run_scenecls_peak

KINDS = ("features", "activations", "targets")  # the caches a student builds (memory-mapped when read)
TINY = ["--backbone", "mobilenet_v2", "--weights", "none", "--image-size", "32", "--no-export"]


def unlabelled_images(folder: Path, count: int) -> Path:
    """``count`` distinct 32-pixel noise images (kept: a larger count adds only the missing ones)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        path = folder / f"{number:06d}.jpg"
        if not path.exists():
            pixels = np.random.default_rng(number).integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
    return folder


def linked(source: Path, folder: Path, count: int) -> Path:
    """A folder of hard links to the first ``count`` images of ``source``."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        target = folder / f"{number:06d}.jpg"
        if not target.exists():
            os.link(source / target.name, target)
    return folder


def measured(args: list[str], home: Path) -> tuple[dict, int, int | None, float]:
    """``scenecls -q ARGS --format json`` in a fresh process: its result, peak resident bytes, peak
    anonymous resident bytes (not counting mapped cache files), seconds."""
    started = time.monotonic()
    output, rss, anonymous = run_scenecls_peak([*args, "--format", "json"], home)
    return json.loads(output), rss, anonymous, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--counts", default="1000,10000,100000")
    options = parser.parse_args()
    counts = sorted(int(c) for c in options.counts.split(","))
    work = options.work.absolute()
    data = work / "labelled"
    if not data.exists():
        generated(data, per_class=30, size=32)
    pool = unlabelled_images(work / "unlabelled-all", counts[-1])
    teacher = work / "runs" / "teacher"
    if not (teacher / "metrics.json").is_file():
        measured(["train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "0",
                  "--project", str(work / "runs"), "--name", "teacher"], work / "home-teacher")  # fmt: skip
    rows = []
    for count in counts:
        home = work / f"home-{count}-{time.strftime('%Y%m%d-%H%M%S')}"  # empty: each run builds its caches
        unlabelled = linked(pool, work / f"unlabelled-{count}", count)
        result, rss, anonymous, seconds = measured(
            ["train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "1",
             "--unfreeze", "1", "--unlabelled", str(unlabelled), "--teacher", str(teacher),
             "--targets", "soft",
             "--project", str(work / "runs"), "--name", f"student-{count}"],
            home,
        )  # fmt: skip
        used = result.get("distillation", {}).get("unlabelled_used")
        caches = {kind: folder_bytes(home / "cache" / kind) for kind in KINDS}
        rows.append((count, used, rss, anonymous, seconds, caches))
        print(f"{count} unlabelled: peak {rss / 2**20:.0f} MiB, {seconds:.0f} s", file=sys.stderr)
    print(f"Machine: {machine()}\n")
    print("| unlabelled images | used | peak resident | of it anonymous | seconds | on disk: features "
          "| activations | targets |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for count, used, rss, anonymous, seconds, caches in rows:
        disk = " | ".join(f"{caches[k] / 2**20:.1f} MiB" for k in KINDS)
        anon = "n/a" if anonymous is None else f"{anonymous / 2**20:.0f} MiB"
        print(f"| {count:,} | {used} | {rss / 2**20:.0f} MiB | {anon} | {seconds:.0f} | {disk} |")


if __name__ == "__main__":
    main()
