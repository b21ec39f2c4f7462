"""Every export format side by side: file size, cold single-image `scenecls predict` (wall time and peak
memory), batch throughput and test accuracy.

Run: python benchmarks/export.py [--data intel-dev|intel-mini] [--repeat 5]
With ../shared (real MobileNetV2 weights and the Intel samples), a MobileNetV2 run is trained first with
`scenecls train --backbone mobilenet_v2 --weights <shared file> --epochs 10 --finetune-epochs 0` (phase 1
on cached features: the weights' own worth, in about a minute), then exported to every format; the
accuracy is that of the data's test split. Without ../shared it says so and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_ptq_no_top.weights.h5"
VARIANTS = [  # (label, export arguments or None for the .keras model itself)
    ("keras (.keras)", None),
    ("SavedModel", ["--to", "savedmodel"]),
    ("LiteRT float32", ["--to", "tflite"]),
    ("LiteRT float16", ["--to", "tflite", "--quantize", "float16"]),
    ("LiteRT int8", ["--to", "tflite", "--quantize", "int8"]),
    ("ONNX", ["--to", "onnx"]),
    ("OpenVINO", ["--to", "openvino"]),
]


def scenecls(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scenecls", *args], env=env, capture_output=True, text=True, check=check
    )


def cold_predict(model: Path, image: Path, env: dict, repeat: int) -> tuple[float, float, str]:
    """Median wall time and peak memory (MB) of `scenecls predict IMAGE --model MODEL`, fresh processes."""
    times, peaks, label = [], [], ""
    for _ in range(repeat):
        code = (
            "import resource, subprocess, sys, time\n"
            "start = time.perf_counter()\n"
            f"done = subprocess.run([sys.executable, '-m', 'scenecls', '-q', 'predict', {str(image)!r}, "
            f"'--model', {str(model)!r}, '--format', 'csv'], capture_output=True, text=True)\n"
            "elapsed = time.perf_counter() - start\n"
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
            "print(elapsed, peak, done.stdout.splitlines()[-1].split(',')[1])\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        elapsed, peak, label = out.stdout.split()
        times.append(float(elapsed))
        peaks.append(float(peak))
    return statistics.median(times), statistics.median(peaks), label


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="intel-dev", choices=["intel-dev", "intel-mini"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    archive = SHARED / "data" / f"{args.data}.zip"
    if not (archive.is_file() and WEIGHTS.is_file()):
        print(f"needs {archive} and {WEIGHTS}: not found, nothing measured")
        return
    work = Path(tempfile.mkdtemp(prefix="scenecls-export-bench-"))
    env = {**os.environ, "SCENECLS_HOME": str(work / "home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    data = work / args.data
    scenecls("-q", "fetch-data", "--from", str(archive), "--dest", str(data), env=env)
    print(f"data: {args.data} ({archive.name}); MobileNetV2, shared ImageNet weights; machine: {machine()}")
    start = time.perf_counter()
    trained = scenecls(
        "-q", "train", "--data", str(data), "--backbone", "mobilenet_v2", "--weights", str(WEIGHTS),
        "--epochs", "10", "--finetune-epochs", "0", "--project", str(work / "runs"), "--format", "json",
        env=env,
    )  # fmt: skip
    run = Path(json.loads(trained.stdout)["run_dir"])
    print(f"trained {run.name} in {time.perf_counter() - start:.0f} s")
    image = next((data / "test").rglob("*.jpg"))

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scenecls.data.pipeline import prepare_data
    from scenecls.predict import predict_array
    from scenecls.runtimes import load_runtime

    test = prepare_data(data, reporter=None, cache_root=work / "cache").test
    print(
        f"{'format':16s} {'export':>7s} {'size':>8s} {'cold predict':>13s} {'peak mem':>9s} "
        f"{'batch img/s':>12s} {'test acc':>9s}"
    )
    for label, export_args in VARIANTS:
        if export_args is None:
            model, seconds = run / "best.keras", 0.0
        else:
            start = time.perf_counter()
            done = scenecls("-q", "export", str(run), *export_args, "--json", env=env, check=False)
            seconds = time.perf_counter() - start
            if done.returncode not in (0, 1):
                print(f"{label:16s} export failed: {done.stderr.strip()}")
                continue
            model = Path(json.loads(done.stdout)["path"])
        files = [p for p in model.rglob("*") if p.is_file()] if model.is_dir() else [model]
        size = sum(p.stat().st_size for p in files) / 1e6
        wall, peak, _ = cold_predict(model, image, env, args.repeat)
        runtime = load_runtime(model)
        predict_array(runtime, test.paths[:32])  # warm-up
        start = time.perf_counter()
        probs = predict_array(runtime, test.paths)
        rate = len(test.paths) / (time.perf_counter() - start)
        accuracy = float((probs.argmax(axis=1) == test.labels).mean())
        print(
            f"{label:16s} {seconds:6.1f}s {size:6.1f}MB {wall:11.2f} s {peak:7.0f}MB {rate:12.1f} "
            f"{accuracy:9.4f}"
        )


if __name__ == "__main__":
    main()
