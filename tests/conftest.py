"""Shared fixtures: images the tests draw themselves and an HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Colours a tiny network separates easily; each class also gets its own stripe direction.
CLASS_COLOURS = {"alpha": (200, 40, 40), "beta": (40, 180, 40), "gamma": (40, 40, 210)}


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Never touch the user's real data, cache or credentials; session-wide, so that module-scoped
    fixtures (set up before any function-scoped one) are isolated too."""
    home = tmp_path_factory.mktemp("scenecls-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("SCENECLS_HOME", str(home))
    patch.setenv("KERAS_HOME", str(home / "keras"))
    patch.delenv("KAGGLE_USERNAME", raising=False)
    patch.delenv("KAGGLE_KEY", raising=False)
    patch.setenv("KAGGLE_CONFIG_DIR", str(home / "kaggle"))
    yield home
    patch.undo()


def draw_scene(label: int, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A noisy image whose colour and stripes depend on its class."""
    colour = np.array(list(CLASS_COLOURS.values())[label % len(CLASS_COLOURS)], dtype=np.float64)
    pixels = np.tile(colour, (size, size, 1))
    stripes = (np.arange(size) // 4) % 2 * 40.0
    if label % 2:
        pixels += stripes[None, :, None]
    else:
        pixels += stripes[:, None, None]
    pixels += rng.normal(0, 20, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_class_folders(
    root: Path, per_class: int, *, seed: int = 0, size: int = 48, classes=tuple(CLASS_COLOURS)
) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_scene(label, rng, size).save(folder / f"{name}_{i:03d}.jpg", quality=92)
    return root


@pytest.fixture
def class_folders(tmp_path) -> Path:
    """alpha/, beta/, gamma/ with 10 JPEGs each."""
    return write_class_folders(tmp_path / "classes", 10)


@pytest.fixture
def split_dataset(tmp_path) -> Path:
    """train/ (12 per class), val/ (4 per class), test/ (4 per class)."""
    root = tmp_path / "splits"
    write_class_folders(root / "train", 12, seed=1)
    write_class_folders(root / "val", 4, seed=2)
    write_class_folders(root / "test", 4, seed=3)
    return root


@contextlib.contextmanager
def ctrl_c_at_batch(monkeypatch, n: int):
    """Ctrl-C during the ``n``-th training batch of a run (counted across epochs and phases): the
    progress callback's batch hook raises ``KeyboardInterrupt`` there, as a signal handler would."""
    from scenecls.training import callbacks

    original = callbacks.BatchProgress.on_train_batch_end
    calls = {"n": 0}

    def interrupting(self, batch, logs=None):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        original(self, batch, logs)

    monkeypatch.setattr(callbacks.BatchProgress, "on_train_batch_end", interrupting)
    try:
        yield
    finally:
        monkeypatch.setattr(callbacks.BatchProgress, "on_train_batch_end", original)


# ------------------------------------------------------------------------------------ HTTP server


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)  # path -> forced status code
    redirects: dict[str, str] = field(default_factory=dict)  # path -> location
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes, then drop (once)
    ignore_range: bool = False
    etags: bool = True  # send an ETag (the body's hash) and honour If-Range
    content_type: dict[str, str] = field(default_factory=dict)  # path -> Content-Type
    requests: list[dict] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        state.requests.append(
            {
                "path": self.path,
                "range": self.headers.get("Range"),
                "auth": self.headers.get("Authorization"),
                "if_range": self.headers.get("If-Range"),
            }
        )
        if self.path in state.redirects:
            self.send_response(302)
            self.send_header("Location", state.redirects[self.path])
            self.end_headers()
            return
        if self.path in state.status:
            self.send_error(state.status[self.path])
            return
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        header = self.headers.get("Range")
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if_range = self.headers.get("If-Range")
        if if_range is not None and (not state.etags or if_range != etag):
            header = None  # the file changed since the partial download: send all of it (RFC 9110)
        if header and not state.ignore_range:
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Content-Type", state.content_type.get(self.path, "application/octet-stream"))
        if state.etags:
            self.send_header("ETag", etag)
        self.end_headers()
        cut = state.cut_after.pop(self.path, None)
        if cut is not None:
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop the connection mid-body
            return
        self.wfile.write(payload)


@pytest.fixture
def http_server():
    """Yields (base_url, state); files are served from ``state.files``."""
    state = ServerState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
