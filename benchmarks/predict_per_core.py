"""Predict throughput per core, by runtime, batch and input size; and `scenecls predict` over a folder.

Run: python benchmarks/predict_per_core.py [--train-data intel-mini] [--folder-data intel-dev]
         [--sizes 150,224] [--seconds 8] [--folder-images 7000]

1. A MobileNetV2 run per input size (the shared ImageNet weights, one head epoch on --train-data, so its
   int8 model is calibrated on real photographs), exported with `scenecls export` to LiteRT float32,
   LiteRT int8 and ONNX.
2. Per core: each (runtime, size, batch) cell in a fresh process pinned to one CPU with one thread
   (LiteRT `num_threads=1`, ONNX Runtime one intra- and inter-op thread, TensorFlow one of each), timed
   for --seconds on decoded images after a warm-up: images per second on one core. Keras is the run's
   `best.keras` as `predict` runs it (one traced function, batch normalisation folded).
3. `scenecls predict FOLDER --model best.tflite` over --folder-images images in a fresh process on every
   core, end to end (decode included), and the decode alone (the same reader, the same threads, no
   model): the decode's share of the end-to-end time.

The published single-thread figures for MobileNetV2 at 224 px to read these against are printed at the
end (XNNPACK's and ncnn's own benchmark tables).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED_WEIGHTS, machine, named_dataset, run_scenecls

# Published single-thread latencies of MobileNetV2 1.0 at 224 px (ms per image, batch 1).
PUBLISHED = [
    ("XNNPACK, Pixel 3a (ARM Cortex-A75), 1 thread", 55.0, "google/XNNPACK README, 2020-03-27"),
    ("XNNPACK, Pixel (ARM Kryo), 1 thread", 49.0, "google/XNNPACK README, 2020-03-27"),
    ("ncnn, AMD Ryzen Embedded V1605B (Zen, 3.6 GHz), 1 thread", 27.81, "Tencent/ncnn benchmark/README.md"),
    ("ncnn, AMD Threadripper 3970X (Zen 2, 4.5 GHz), 1 thread", 14.82, "Tencent/ncnn benchmark/README.md"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-data", default="intel-mini")
    parser.add_argument("--folder-data", default="intel-dev")
    parser.add_argument("--sizes", default="150,224")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per cell")
    parser.add_argument("--folder-images", type=int, default=7000)
    parser.add_argument("--cell", nargs=3, metavar=("KIND", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        _cell(*args.cell, seconds=args.seconds)
        return
    if not SHARED_WEIGHTS.is_file():
        sys.exit(f"needs the shared MobileNetV2 weights: {SHARED_WEIGHTS}")
    work = Path(tempfile.mkdtemp(prefix="scenecls-per-core-"))
    home, project = work / "home", work / "runs"
    train_data = named_dataset(args.train_data, work)
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d')}")
    models: dict[int, dict[str, Path]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        models[size] = _run_and_exports(train_data, size, project, home)
    print(f"\nimages per second on ONE core (one thread, pinned), {args.seconds:.0f} s per cell")
    print("| runtime | size | batch 1 | batch 32 | batch 1 latency |")
    print("|---|---|---|---|---|")
    batches = [int(b) for b in args.batches.split(",")]
    for size, files in models.items():
        for kind, path in files.items():
            rates = {batch: _measure(kind, path, batch, args.seconds) for batch in batches}
            cells = " | ".join(f"{rates[b]:.1f}" for b in batches)
            latency = f"{1000 / rates[1]:.1f} ms" if 1 in rates else "-"
            print(f"| {kind} | {size} | {cells} | {latency} |", flush=True)
    print("\npublished MobileNetV2 1.0, 224 px, batch 1, one thread:")
    for name, ms, source in PUBLISHED:
        print(f"- {name}: {ms:.1f} ms = {1000 / ms:.1f} img/s ({source})")
    folder = _folder(named_dataset(args.folder_data, work), args.folder_images, work / "folder")
    size = min(models)
    for kind in ("litert-float32", "litert-int8"):
        _predict_folder(folder, models[size][kind], size, home)


def _run_and_exports(data: Path, size: int, project: Path, home: Path) -> dict[str, Path]:
    name = f"mnv2-{size}"
    run_scenecls(["train", "--data", str(data), "--backbone", "mobilenet_v2",
                  "--weights", str(SHARED_WEIGHTS), "--image-size", str(size), "--epochs", "1",
                  "--finetune-epochs", "0", "--no-export",
                  "--project", str(project), "--name", name, "--format", "json"], home)  # fmt: skip
    run = project / name
    files = {"keras": run / "best.keras"}
    formats = (("litert-float32", []), ("litert-int8", ["--quantize", "int8"]), ("onnx", ["--to", "onnx"]))
    for kind, extra in formats:
        output = run / "exports" / f"{kind}.{'onnx' if kind == 'onnx' else 'tflite'}"
        output.parent.mkdir(exist_ok=True)
        to = [] if kind == "onnx" else ["--to", "tflite"]
        run_scenecls(["export", str(run), *to, *extra, "-o", str(output), "--project", str(project),
                      "--format", "json"], home)  # fmt: skip
        files[kind] = output
    print(f"run {name}: {', '.join(files)}", flush=True)
    return files


def _measure(kind: str, path: Path, batch: int, seconds: float) -> float:
    """Images per second of one cell, in a fresh process pinned to one CPU."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--cell", kind, str(path), str(batch), "--seconds", str(seconds)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"{kind} {path} batch {batch} failed: {done.stderr.strip()[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["images_per_second"])


def _cell(kind: str, model: str, batch: str, *, seconds: float) -> None:
    """One cell, in this process: pinned to one CPU, one thread, images per second as JSON."""
    import numpy as np

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    forward, size = _one_thread_forward(kind, Path(model), int(batch))
    images = np.random.default_rng(0).uniform(0, 255, (int(batch), size, size, 3)).astype(np.float32)
    for _ in range(3):  # warm-up: tracing, allocation, caches
        forward(images)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        forward(images)
        count += len(images)
    print(json.dumps({"images_per_second": count / (time.perf_counter() - start)}))


def _one_thread_forward(kind: str, model: Path, batch: int):
    if kind == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
        return (lambda x: session.run(None, {name: x})[0]), int(shape[1])
    if kind.startswith("litert"):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(model), num_threads=1)
        details = interpreter.get_input_details()[0]
        size = int(details["shape"][1])
        interpreter.resize_tensor_input(details["index"], [batch, size, size, 3])
        interpreter.allocate_tensors()
        output = interpreter.get_output_details()[0]["index"]

        def forward(x):
            interpreter.set_tensor(details["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(output)

        return forward, size
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from scenecls.runtimes import KerasRuntime

    runtime = KerasRuntime(model, batch_size=batch)
    return runtime.predict, runtime.input_size[0]


def _folder(source: Path, count: int, dest: Path) -> Path:
    """A flat folder of ``count`` images of ``source`` (links, not copies), as a user's folder of photos."""
    dest.mkdir(parents=True, exist_ok=True)
    images = sorted(p for p in source.rglob("*.jpg"))[:count]
    for i, path in enumerate(images):
        (dest / f"{i:05d}.jpg").symlink_to(path.resolve())
    print(f"\nfolder: {len(images)} images of {source.name}")
    return dest


def _predict_folder(folder: Path, model: Path, size: int, home: Path) -> None:
    """`scenecls predict` end to end over ``folder``, and the decode alone, on every core."""
    env = {**os.environ, "SCENECLS_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    count = sum(1 for _ in folder.iterdir())
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "scenecls", "-q", "predict", str(folder), "--model", str(model),
         "--format", "csv"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    total = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"predict failed: {done.stderr.strip()[-2000:]}")
    rows = len(done.stdout.strip().splitlines()) - 1
    decode = _decode_seconds(folder, size)
    print(
        f"`scenecls predict` {count} images, {model.name} ({model.parent.parent.name}), every core: "
        f"{total:.1f} s = {rows / total:.0f} img/s end to end (start-up included); the decode alone "
        f"{decode:.1f} s = {count / decode:.0f} img/s, {100 * decode / total:.0f} % of the end-to-end time"
    )


def _decode_seconds(folder: Path, size: int) -> float:
    """Seconds to decode and resize every image of ``folder`` as `predict` does (its reader, its threads)."""
    code = (
        "import os, sys, time\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from pathlib import Path\n"
        "from scenecls.data.images import load_rgb\n"
        "paths = sorted(Path(sys.argv[1]).iterdir()); size = int(sys.argv[2])\n"
        "start = time.perf_counter()\n"
        "with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as pool:\n"
        "    for _ in pool.map(lambda p: load_rgb(str(p), (size, size)), paths): pass\n"
        "print(time.perf_counter() - start)\n"
    )
    command = [sys.executable, "-c", code, str(folder), str(size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"decode failed: {done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip())


if __name__ == "__main__":
    main()
