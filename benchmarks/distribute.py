"""What --distribute mirrored does to one run's speed and history on this machine.

Run: python benchmarks/distribute.py [--devices 2] [--finetune-epochs 2] [--image-size 150]

The same `scenecls train` (MobileNetV2, random weights, intel-mini or generated images, 1 head epoch on
cached features, fine-tuning of the last 5 blocks) runs twice in fresh processes whose CPU is split into
`--devices` logical devices: once `--distribute off` with batch 32, once `--distribute mirrored` with
32 / devices per replica (the same global batch). It prints each phase's seconds, the fine-tuning images
per second and the largest difference between the two histories. On a machine with GPUs the same script
with `--devices 0` uses them as they are.
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

RUNNER = """
import sys
import tensorflow as tf

devices = int(sys.argv.pop(1))
if devices:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
from scenecls.cli import main

sys.argv[0] = "scenecls"
main()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=150)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scenecls-distribute-"))
    data, source = dataset(work)
    runner = work / "runner.py"
    runner.write_text(RUNNER)
    env = {**os.environ, "SCENECLS_HOME": str(work / "home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    replicas = max(args.devices, 1)
    common = ["train", "--data", str(data), "--backbone", "mobilenet_v2", "--weights", "none",
              "--image-size", str(args.image_size), "--epochs", "1", "--finetune-epochs",
              str(args.finetune_epochs), "--dropout", "0", "--no-export", "--project", str(work / "runs"),
              "--format", "json", "-q"]  # fmt: skip
    print(f"data: {source}; machine: {machine()}; {args.devices} logical devices")
    histories = {}
    for mode, batch in (("off", 32), ("mirrored", 32 // replicas)):
        command = [sys.executable, str(runner), str(args.devices), *common, "--distribute", mode,
                   "-b", str(batch), "--name", mode]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{mode} failed: {done.stderr.strip()}")
        run = work / "runs" / mode
        metrics = json.loads((run / "metrics.json").read_text())
        config = json.loads((run / "config.json").read_text())
        with open(run / "history.csv", newline="") as handle:
            histories[mode] = list(csv.DictReader(handle))
        finetune = metrics["phase_seconds"].get("finetune", 0.0)
        images = config["images"]["train"] * args.finetune_epochs
        print(
            f"{mode:9s} batch {batch} x {replicas if mode == 'mirrored' else 1}: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in metrics["phase_seconds"].items())
            + f"; fine-tuning {images / finetune:.0f} img/s"
        )
    worst = max(
        abs(float(a[key]) - float(b[key]))
        for a, b in zip(histories["off"], histories["mirrored"], strict=True)
        for key in ("loss", "val_loss")
    )
    print(f"largest loss difference between the two histories: {worst:.2e}")


if __name__ == "__main__":
    main()
