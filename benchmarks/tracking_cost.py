"""What MLflow tracking costs a run: the milliseconds one epoch's metrics take to reach a tracking
server, and the seconds the start (parameters) and the end (files) of a run take.

Run: python benchmarks/tracking_cost.py [--epochs 50]

Starts a real ``mlflow server`` on 127.0.0.1 (a free port, a temporary SQLite store), as a team's own
server on the same network would be; a remote server adds its round trip to each figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scenecls-mlflow-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{work / 'db.sqlite'}",
            "--artifacts-destination",
            str(work / "art"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        for _ in range(300):
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            time.sleep(0.3)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        _measure(work, args.epochs)
    finally:
        os.killpg(server.pid, signal.SIGKILL)


def _measure(work: Path, epochs: int) -> None:
    import json

    from scenecls.config import TrainConfig
    from scenecls.tracking import TrackingSettings

    run_dir = work / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(TrainConfig().to_dict()))
    for name, size in (("history.csv", 4_000), ("metrics.json", 3_000), ("best.tflite", 9_000_000)):
        (run_dir / name).write_bytes(os.urandom(size))
    tracker = TrackingSettings("cost").tracker()
    started = time.perf_counter()
    tracker.start(run_dir, TrainConfig().to_dict(), None)
    start = time.perf_counter() - started
    times = []
    for epoch in range(1, epochs + 1):
        row = {
            "epoch": epoch,
            "phase": "head",
            "loss": 0.5,
            "accuracy": 0.8,
            "val_loss": 0.6,
            "val_accuracy": 0.7,
            "lr": 1e-3,
            "seconds": 10.0,
        }
        began = time.perf_counter()
        tracker.epoch(row)
        times.append(time.perf_counter() - began)
    began = time.perf_counter()
    tracker._send_files(run_dir, [])
    files = time.perf_counter() - began
    print(f"MLflow server on 127.0.0.1 (SQLite store); {machine()}")
    print(
        f"start of a run (experiment, run, {len(TrainConfig().to_dict())}+ parameters): {start * 1000:.0f} ms"
    )
    print(
        f"one epoch's metrics: median {statistics.median(times) * 1000:.1f} ms, "
        f"max {max(times) * 1000:.1f} ms over {epochs} epochs"
    )
    print(f"end of a run (config, history, metrics and a 9 MB best.tflite): {files * 1000:.0f} ms")


if __name__ == "__main__":
    main()
