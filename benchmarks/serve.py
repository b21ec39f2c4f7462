"""`scenecls serve` under load: requests/s and latency at several concurrencies, beside the same model's
in-process batched throughput.

Run: python benchmarks/serve.py --model runs/train [--seconds 10] [--concurrency 1,4,16,64] [--max-queue 256]

A real server process (``scenecls serve --port 0``) is spoken to over real sockets by client processes
(so that the clients do not share one interpreter lock), each request one 150x150 JPEG of the Intel set
sent as the raw body (``Content-Type: image/jpeg``) on a kept-alive connection. The in-process figures
run the same model file through the same runtime: "model" on images already decoded, "decode + model"
decoding the same JPEG bytes first, as the server must. The clients run on the same 2 cores as the
server, as they would in a test on one machine: the ratios are a floor.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from _common import SHARED_ZIP, machine


def sample_jpeg() -> tuple[bytes, str]:
    """One 150x150 JPEG: an Intel test image when the shared archive is there, else a generated one."""
    import io
    import zipfile

    if SHARED_ZIP.is_file():
        with zipfile.ZipFile(SHARED_ZIP) as archive:
            name = next(n for n in sorted(archive.namelist()) if n.lower().endswith(".jpg"))
            return archive.read(name), f"an Intel image ({Path(name).name})"
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (150, 150, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), "a generated 150x150 JPEG"


def client(url: str, body: bytes, loops: int, seconds: float, queue) -> None:
    """``loops`` threads, each posting ``body`` on its own connection for ``seconds``."""
    import threading

    parts = urlsplit(url)
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def loop() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        mine = []
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                connection.request("POST", "/predict", body=body, headers={"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            mine.append((status, time.perf_counter() - started))
        connection.close()
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=loop) for _ in range(loops)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put(results)


def load(url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    processes = min(concurrency, 4)
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=client, args=(url, body, n, seconds, queue)) for n in shares]
    for worker in workers:
        worker.start()
    results = [row for _ in workers for row in queue.get()]
    for worker in workers:
        worker.join()
    ok = sorted(latency for status, latency in results if status == 200)
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    percentile = lambda q: ok[min(len(ok) - 1, int(q * len(ok)))] * 1000 if ok else float("nan")  # noqa: E731
    return {
        "rps": len(ok) / seconds,
        "p50": percentile(0.50),
        "p99": percentile(0.99),
        "statuses": statuses,
    }


def in_process(model: Path, body: bytes, batch: int, seconds: float) -> tuple[float, float, str]:
    """Images/s of the served model file through its runtime: on decoded images, and decoding first."""
    import numpy as np

    from scenecls.data.images import decode_rgb
    from scenecls.runs import resolve_model
    from scenecls.runtimes import fastest_for_batches, load_runtime

    path, _ = resolve_model(str(model), Path("runs"))
    path = fastest_for_batches(path)  # what the server runs
    runtime = load_runtime(path, batch_size=batch)
    image = decode_rgb(body, runtime.input_size).astype(np.float32)
    images = np.stack([image] * batch)
    runtime.predict(images)  # warm up

    def rate(step) -> float:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            step()
            done += batch
        return done / (time.perf_counter() - started)

    model_only = rate(lambda: runtime.predict(images))
    with_decode = rate(
        lambda: runtime.predict(
            np.stack([decode_rgb(body, runtime.input_size) for _ in range(batch)]).astype(np.float32)
        )
    )
    return model_only, with_decode, f"{path.name} ({runtime.kind})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="a run folder or an exported model")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-queue", type=int, default=256, help="the server's; below the clients: 503s")
    args = parser.parse_args()

    body, what = sample_jpeg()
    model_only, with_decode, name = in_process(Path(args.model), body, args.max_batch, args.seconds)
    print(f"model: {name}; request: {what}, {len(body):,} bytes; machine: {machine()}")
    print(f"in process, batches of {args.max_batch}: {model_only:.0f} img/s (model), "
          f"{with_decode:.0f} img/s (decode + model)")  # fmt: skip

    server = subprocess.Popen(
        [sys.executable, "-m", "scenecls", "-q", "serve", args.model, "--port", "0",
         "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = server.stdout.readline().strip()
        if not url:
            sys.exit("the server did not start")
        columns = [
            "concurrency",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "p99/p50",
            "vs model",
            "vs decode + model",
        ]
        print("| " + " | ".join([*columns, "statuses"]) + " |")
        print("|---|---|---|---|---|---|---|---|")
        load(url, body, 4, 2.0)  # warm up
        for concurrency in map(int, args.concurrency.split(",")):
            figures = load(url, body, concurrency, args.seconds)
            statuses = ", ".join(f"{k or 'failed'}: {v}" for k, v in sorted(figures["statuses"].items()))
            print(
                f"| {concurrency} | {figures['rps']:.0f} | {figures['p50']:.1f} | {figures['p99']:.1f} | "
                f"{figures['p99'] / figures['p50']:.1f} | {figures['rps'] / model_only:.0%} | "
                f"{figures['rps'] / with_decode:.0%} | {statuses} |"
            )
    finally:
        server.terminate()
        server.wait(30)
    print(f"server exit code after SIGTERM: {server.returncode}")


if __name__ == "__main__":
    main()
