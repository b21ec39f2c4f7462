"""Fine-tuning speed under --mixed-precision and --jit on this machine.

Run: python benchmarks/precision.py [--image-size 150] [--settings off,bfloat16,jit]

The same `scenecls train` (MobileNetV2, random weights, intel-mini or generated images, 1 head epoch on
cached features, 2 epochs fine-tuning the last 5 blocks, batch 32) in a fresh process per setting. It
prints the second fine-tuning epoch's seconds (the first includes tracing and, with XLA, compiling) as
images per second, and the whole fine-tuning phase.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import dataset, machine

SETTINGS = {
    "off": ["--mixed-precision", "off", "--jit", "off"],
    "bfloat16": ["--mixed-precision", "bfloat16", "--jit", "off"],
    "float16": ["--mixed-precision", "float16", "--jit", "off"],
    "jit": ["--mixed-precision", "off", "--jit", "on"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--settings", default="off,bfloat16,jit")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scenecls-precision-"))
    data, source = dataset(work)
    env = {**os.environ, "SCENECLS_HOME": str(work / "home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    print(f"data: {source}; machine: {machine()}; {args.image_size} px")
    for name in args.settings.split(","):
        command = [sys.executable, "-m", "scenecls", "-q", "train", "--data", str(data), "--backbone",
                   "mobilenet_v2", "--weights", "none", "--image-size", str(args.image_size), "--epochs", "1",
                   "--finetune-epochs", "2", "--no-export", "--project", str(work / "runs"), "--name", name,
                   "--format", "json", *SETTINGS[name]]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name:9s} failed: {done.stderr.strip()[-300:]}")
            continue
        run = work / "runs" / name
        images = json.loads((run / "config.json").read_text())["images"]["train"]
        with open(run / "history.csv", newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["phase"] == "finetune"]
        phase = json.loads((run / "metrics.json").read_text())["phase_seconds"]["finetune"]
        steady = float(rows[-1]["seconds"])
        print(
            f"{name:9s} fine-tuning epoch 2: {steady:.1f} s, {images / steady:.0f} img/s; phase {phase:.1f} s"
        )


if __name__ == "__main__":
    main()
