"""``scenecls serve``: a real server process (uvicorn) on a free port of 127.0.0.1, spoken to over real
sockets with the standard library's HTTP client. Its answers are checked against ``scenecls predict``
on the same images; its limits, its queue and its graceful stop are driven to their edges.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from scenecls.serving.batching import Batcher, QueueFull
from tests.conftest import foreign_lines, invoke, one_error_line

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers
def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of ``files`` (each a ``file`` field), and its content type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Server:
    """``scenecls serve`` in its own process; ``url`` once it listens."""

    def __init__(self, model: Path, tmp: Path, *args: str) -> None:
        self.log = tmp / f"serve-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log.open("w")
        command = [sys.executable, "-m", "scenecls", "serve", str(model), "--port", "0", *args]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=tmp, env=_env()
        )
        line = self.process.stdout.readline().strip()  # the address, once the socket listens
        assert line.startswith("http://127.0.0.1:"), self.stderr()
        self.url = line
        self.host, self.port = urlsplit(line).hostname, urlsplit(line).port

    def request(self, method: str, path: str, body: bytes | None = None, headers=None, timeout=60):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.headers, response.read()  # headers: any case
        finally:
            connection.close()

    def json(self, method: str, path: str, body: bytes | None = None, headers=None):
        status, headers, data = self.request(method, path, body, headers)
        return status, headers, json.loads(data)

    def post_files(self, files: list[tuple[str, bytes]], query: str = ""):
        body, kind = multipart(files)
        return self.json("POST", "/predict" + query, body, {"Content-Type": kind})

    def stderr(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def _env() -> dict[str, str]:
    """A user's environment: without the quiet TensorFlow setting of the tests' own process."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def png(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- a model
@pytest.fixture(scope="module")
def run(finished_run) -> Path:
    """A finished tiny run with its end-of-run ``best.tflite``, which the server runs."""
    return finished_run


@pytest.fixture(scope="module")
def photos(run) -> list[Path]:
    test = Path(json.loads((run / "config.json").read_text())["data"]) / "test"
    return sorted(test.rglob("*.jpg"))[::2]  # some of each class


@pytest.mark.slow
def test_answers_are_predict_s_answers_whichever_way_images_come(run, photos, tmp_path):
    expected = invoke("-q", "predict", *map(str, photos[:2]), "--model", str(run), "--top-k", "2",
                      "--format", "json")  # fmt: skip
    assert expected.exit_code == 0, expected.output
    expected = {Path(row["path"]).name: row for row in json.loads(expected.stdout)}

    with Server(run, tmp_path) as server:
        files = [(p.name, p.read_bytes()) for p in photos[:2]] + [("notes.txt", b"not a picture")]
        status, _, answer = server.post_files(files, "?top_k=2")
        assert status == 200
        rows = answer["predictions"]
        assert [row["path"] for row in rows] == [photos[0].name, photos[1].name, "notes.txt"]
        for row in rows[:2]:
            want = expected[row["path"]]
            assert row["label"] == want["label"] and row["error"] is None
            assert [t["label"] for t in row["top"]] == [t["label"] for t in want["top"]]
            assert row["confidence"] == pytest.approx(want["confidence"], abs=1e-6)
        assert rows[2]["error"] == "not an image" and rows[2]["label"] is None

        # The same image as JSON base64, and as the raw body, gets the same answer.
        data = base64.b64encode(photos[0].read_bytes()).decode()
        body = json.dumps({"images": [{"name": "a.png", "data": data}, data], "top_k": 2}).encode()
        status, _, answer = server.json("POST", "/predict", body, {"Content-Type": "application/json"})
        assert status == 200
        assert [row["path"] for row in answer["predictions"]] == ["a.png", "images[1]"]
        assert {row["label"] for row in answer["predictions"]} == {rows[0]["label"]}
        status, _, answer = server.json(
            "POST", "/predict", photos[0].read_bytes(), {"Content-Type": "image/png"}
        )
        assert status == 200 and answer["predictions"][0]["confidence"] == pytest.approx(
            rows[0]["confidence"]
        )

        # A floor above every confidence: unknown, with the top class kept as the best guess.
        status, _, answer = server.post_files(files[:1], "?min_confidence=1")
        row = answer["predictions"][0]
        assert status == 200 and row["label"] == "unknown" and row["unknown"] is True
        assert row["best_guess"] == rows[0]["label"]

        # Nothing readable at all: 422, with each image's reason.
        status, _, answer = server.post_files([("x.jpg", b"\xff\xd8 broken")])
        assert status == 422 and answer["predictions"][0]["error"]

        # The model's facts, from the run.
        status, _, facts = server.json("GET", "/metadata")
        metrics = json.loads((run / "metrics.json").read_text())
        assert status == 200 and facts["runtime"] == "tflite" and facts["run"] == run.name
        assert facts["classes"] == json.loads((run / "labels.json").read_text())["classes"]
        assert facts["input"]["height"] == facts["input"]["width"] == 32
        assert facts["fingerprint"] == hashlib.sha256((run / "best.tflite").read_bytes()).hexdigest()[:16]
        assert facts["accuracy"]["test"] == pytest.approx(metrics["test_accuracy"])
        assert answer["fingerprint"] == facts["fingerprint"]
        status, _, spec = server.json("GET", "/openapi.json")
        assert set(spec["paths"]) >= {"/predict", "/health", "/metadata"}
        assert {"multipart/form-data", "application/json"} <= set(
            spec["paths"]["/predict"]["post"]["requestBody"]["content"]
        )
        status, _, health = server.json("GET", "/health")
        assert status == 200 and health["status"] == "ok" and health["images"] == 6  # the readable ones

        assert server.stop() == 0
    log = server.stderr()
    assert "POST /predict 200 3 images" in log and "POST /predict 422 1 image " in log
    assert "stopped: 5 requests answered, 6 images classified" in log and "Traceback" not in log
    assert not foreign_lines(log), log  # no TensorFlow, uvicorn or LiteRT line of its own


@pytest.mark.slow
def test_concurrent_requests_are_answered_in_shared_batches(run, photos, tmp_path):
    with Server(run, tmp_path, "--max-wait", "300", "--max-batch", "32") as server:
        alone = {}
        for photo in photos:
            _, _, answer = server.post_files([(photo.name, photo.read_bytes())])
            alone[photo.name] = answer["predictions"][0]
        _, _, before = server.json("GET", "/health")

        clients = 16
        barrier = threading.Barrier(clients)
        results: list = [None] * clients

        def client(i: int) -> None:
            photo = photos[i % len(photos)]
            barrier.wait()
            results[i] = (photo.name, server.post_files([(photo.name, photo.read_bytes())]))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for name, (status, _, answer) in results:
            row = answer["predictions"][0]
            assert status == 200 and row["label"] == alone[name]["label"]
            assert row["confidence"] == pytest.approx(alone[name]["confidence"], abs=1e-5)
        _, _, after = server.json("GET", "/health")
        assert after["images"] - before["images"] == clients
        assert after["batches"] - before["batches"] < clients  # some images shared a batch
        assert server.stop() == 0


@pytest.mark.slow
def test_limits_refuse_with_the_right_status_and_the_server_stays_up(run, photos, tmp_path):
    args = ["--max-body", "0.03", "--client-timeout", "0.5", "--max-queue", "4", "--max-batch", "8",
            "--max-wait", "1500", "--max-megapixels", "0.01"]  # fmt: skip
    with Server(run, tmp_path, *args) as server:
        image = photos[0].read_bytes()
        # A body over 30 KB: 413, whether its length is declared or it is sent in chunks.
        big = os.urandom(40_000)
        status, _, answer = server.json("POST", "/predict", big, {"Content-Type": "image/jpeg"})
        assert status == 413 and "over 0.03 MB" in answer["error"]
        connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        connection.request("POST", "/predict", body=iter([big[:20_000], big[20_000:]]),
                           headers={"Content-Type": "image/jpeg"}, encode_chunked=True)  # fmt: skip
        assert connection.getresponse().status == 413
        connection.close()
        # More images in one request than the queue holds: 413; an unknown body type: 415.
        status, _, _ = server.post_files([("a.png", image)] * 5)
        assert status == 413
        status, _, _ = server.json("POST", "/predict", b"x", {"Content-Type": "text/plain"})
        assert status == 415
        status, _, _ = server.json("POST", "/predict", b"{", {"Content-Type": "application/json"})
        assert status == 400
        # An image over 0.01 megapixels (a PNG: a JPEG counts at the reduced size it is decoded at) is an
        # error row, not a crash, and the other image is answered.
        status, _, answer = server.post_files([("big.png", png((9, 9, 9), size=200)), ("a.jpg", image)])
        assert status == 200 and answer["predictions"][0]["error"].startswith("too large")
        assert answer["predictions"][1]["label"]

        # A client that stops sending half-way: 408 after --client-timeout.
        with socket.create_connection((server.host, server.port), timeout=10) as slow:
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 1000\r\n\r\n" + b"x" * 10)  # fmt: skip
            assert slow.recv(100).startswith(b"HTTP/1.1 408")

        # A full queue: the batcher holds 3 images for up to 1.5 s waiting for more, so 2 more
        # cannot be queued (4 at most): 503 with Retry-After, while the first request is answered.
        first: list = []
        waiting = threading.Thread(target=lambda: first.append(server.post_files([("a.png", image)] * 3)))
        waiting.start()
        deadline = time.monotonic() + 10
        while server.json("GET", "/health")[2]["queued"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        status, headers, answer = server.post_files([("b.png", image)] * 2)
        assert status == 503 and int(headers["Retry-After"]) >= 1 and "queue is full" in answer["error"]
        waiting.join(30)
        assert first[0][0] == 200 and len(first[0][2]["predictions"]) == 3
        status, _, health = server.json("GET", "/health")
        assert status == 200 and health["queued"] == 0
        assert server.stop() == 0
    assert "Traceback" not in server.stderr()


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(run, photos, tmp_path):
    with Server(run, tmp_path) as server:
        body, kind = multipart([(photos[0].name, photos[0].read_bytes())])
        connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        connection.putrequest("POST", "/predict")
        connection.putheader("Content-Type", kind)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        connection.send(body[:100])  # the request is in flight ...
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)  # ... when the stop is asked for
        time.sleep(0.5)
        with pytest.raises(OSError):  # no new connection is taken any more
            socket.create_connection((server.host, server.port), timeout=2).close()
        assert server.process.poll() is None  # still finishing the request
        connection.send(body[100:])
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200 and answer["predictions"][0]["label"]
        assert server.process.wait(timeout=30) == 0
    assert "stopped: 1 request answered, 1 image classified in 1 batch" in server.stderr()


@pytest.mark.slow
def test_a_run_is_served_by_its_fastest_fresh_export_and_a_changed_one_is_passed_over(run, tmp_path):
    import shutil

    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    assert invoke("-q", "export", str(copy), "--to", "onnx", "--parity", "0").exit_code == 0
    with Server(copy, tmp_path) as server:
        assert server.json("GET", "/metadata")[2]["runtime"] == "onnx"
        assert server.stop() == 0
    data = bytearray((copy / "best.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "best.onnx").write_bytes(bytes(data))
    with Server(copy, tmp_path) as server:
        assert server.json("GET", "/metadata")[2]["runtime"] == "tflite"
        assert server.stop() == 0
    assert "best.onnx" in server.stderr() and "not using it" in server.stderr()
    with Server(copy, tmp_path, "--keras") as server:
        assert server.json("GET", "/metadata")[2]["runtime"] == "keras"
        assert server.post_files([("a.png", png((200, 40, 40)))])[0] == 200
        assert server.stop() == 0
    assert not foreign_lines(server.stderr()), server.stderr()  # TensorFlow's own lines stay out


# ---------------------------------------------------------------------------------------------- bad starts
def test_a_port_in_use_is_one_line_before_any_model_loads(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = invoke("serve", "--port", str(port), "--project", str(tmp_path / "none"))
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is in use" in one_error_line(result)


def test_a_file_that_is_not_a_model_is_one_line_and_frees_the_port(tmp_path):
    fake = tmp_path / "model.keras"
    fake.write_bytes(b"PK\x03\x04 not really a zip")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = invoke("serve", str(fake), "--port", str(port))
    assert result.exit_code == 1 and "model.keras" in one_error_line(result)
    with socket.socket() as again:  # the port it had bound is free again
        again.bind(("127.0.0.1", port))


def test_without_the_extra_it_names_the_extra(tmp_path):
    code = "import sys; sys.modules['fastapi'] = None; from scenecls.cli import main; main()"
    result = subprocess.run([sys.executable, "-c", code, "serve", "--project", str(tmp_path)],
                            capture_output=True, text=True, env=_env(), timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: scenecls serve needs fastapi: pip install 'scenecls[serve]'"
    ]


def test_serve_help_names_its_endpoints_and_limits():
    result = invoke("serve", "--help")
    assert result.exit_code == 0
    assert "POST /predict" in result.output and "--max-queue" in result.output


# ---------------------------------------------------------------------------------------------- the batcher
def _running(predict, **limits):
    import asyncio

    async def scenario(body):
        batcher = Batcher(predict, **limits)
        await batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.stop()

    return lambda body: asyncio.run(scenario(body))


def test_the_batcher_groups_waiting_images_and_keeps_their_order():
    import asyncio

    sizes = []

    def predict(images):
        sizes.append(len(images))
        return images[:, 0, 0, :2]  # each image's own first pixel: an answer that says whose it is

    async def body(batcher):
        images = [np.full((2, 2, 3), i, np.float32) for i in range(10)]
        answers = await asyncio.gather(*(batcher.predict([image]) for image in images))
        return [float(rows[0][0]) for rows in answers]

    assert _running(predict, max_batch=4, max_wait=0.2, max_queue=100)(body) == list(range(10))
    assert sizes == [4, 4, 2]


def test_the_batcher_refuses_beyond_its_queue_and_answers_all_it_accepted_when_stopped():
    import asyncio

    seen = []

    def predict(images):
        seen.append(len(images))
        return np.zeros((len(images), 3), np.float32)

    async def scenario():
        batcher = Batcher(predict, max_batch=8, max_wait=5.0, max_queue=3)
        await batcher.start()
        accepted = asyncio.ensure_future(batcher.predict([np.zeros((2, 2, 3), np.float32)] * 3))
        await asyncio.sleep(0.05)  # held, waiting for more images for up to 5 s
        with pytest.raises(QueueFull) as refused:
            await batcher.predict([np.zeros((2, 2, 3), np.float32)])
        assert refused.value.retry_after >= 1
        started = time.monotonic()
        await batcher.stop()  # does not wait out the 5 s: the stop ends the wait, the batch runs
        return len(await accepted), time.monotonic() - started

    answered, took = asyncio.run(scenario())
    assert answered == 3 and seen == [3] and took < 2
