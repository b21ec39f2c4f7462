"""Shared fixtures: images the tests draw themselves and an HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import stat
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Colours a tiny network separates easily; each class also gets its own stripe direction.
CLASS_COLOURS = {"alpha": (200, 40, 40), "beta": (40, 180, 40), "gamma": (40, 40, 210)}

# What the team shares beside the project: real Intel photographs and real MobileNetV2 weights, for the
# tests that must show real learning (skipped, with the reason, where the folder is absent).
SHARED = Path(__file__).resolve().parents[2] / "shared"
MINI = SHARED / "data" / "intel-mini.zip"
WEIGHTS_FILE = SHARED / "weights" / "mobilenet_v2_imagenet_ptq_no_top.weights.h5"
needs_real_photos = pytest.mark.skipif(
    not (MINI.is_file() and WEIGHTS_FILE.is_file()),
    reason="needs ../shared/data/intel-mini.zip and ../shared/weights (real MobileNetV2 weights)",
)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """What ``build(folder)`` returns, built by the first of the test workers that asks and reused by the
    others (each worker's module fixtures would otherwise train the same run once per worker). For
    fixtures whose tests only read what was built, or copy it to change it: the workers share it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the base folder all workers of this session share
    done = root / f"built-{name}.done"
    with open(root / f"built-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait for the first to finish, then read its result
        if not done.is_file():  # a fresh folder per attempt: one that failed leaves nothing in the way
            done.write_text(str(build(Path(tempfile.mkdtemp(prefix=f"built-{name}-", dir=root)))))
        return Path(done.read_text())


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


def write_train_test(root: Path, train: int, test: int) -> Path:
    """train/ (``train`` images per class, no val/: a run splits one off) and test/ (``test`` per class),
    40 px: the data set most training tests share."""
    write_class_folders(root / "train", train, seed=1, size=40)
    write_class_folders(root / "test", test, seed=2, size=40)
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


# -------------------------------------------------------------------------------- archives and errors


def zip_of(tree: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(tree.rglob("*")):
            archive.write(path, path.relative_to(tree).as_posix())
    return buffer.getvalue()


def intel_like_zip(tmp_path: Path) -> bytes:
    """Packed like the Kaggle archive: seg_train/seg_train/<class>, seg_test/..., seg_pred/..."""
    tree = tmp_path / "intel-src"
    write_class_folders(tree / "seg_train" / "seg_train", 3, size=16)
    write_class_folders(tree / "seg_test" / "seg_test", 2, size=16, seed=5)
    pred = tree / "seg_pred" / "seg_pred"
    write_class_folders(pred / "tmp", 2, size=16, classes=("x",))
    for image in (pred / "tmp" / "x").iterdir():
        image.rename(pred / image.name)
    for leftover in [*sorted(pred.glob("tmp/**/*"), reverse=True), pred / "tmp"]:
        leftover.rmdir()
    return zip_of(tree)


def make_zip(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


@pytest.fixture
def intel_zip(tmp_path) -> Path:
    """A small archive packed like the Kaggle one."""
    archive = tmp_path / "intel.zip"
    archive.write_bytes(intel_like_zip(tmp_path))
    return archive


def invoke(*args: str, **kwargs):
    """The CLI run in-process on ``args``; a bug's exception is raised in the test, not turned into an
    exit code (click's own exits, and ours, still give their codes)."""
    from click.testing import CliRunner

    from scenecls.cli import cli

    kwargs.setdefault("catch_exceptions", False)
    return CliRunner().invoke(cli, list(args), **kwargs)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run (3 classes of generated scenes, 10 train and 5 test images each, 3 epochs of
    the head) with its end-of-run ``best.tflite``, for tests that only read a run: copy it to change it.
    Trained once for all the test workers."""

    def build(root: Path) -> Path:
        write_train_test(root / "data", 10, 5)
        recipe = tiny("--dense", "1", "--epochs", "3", "--finetune-epochs", "0", export=True)
        result = invoke("-q", "train", "--data", str(root / "data"), *recipe, "--project", str(root / "runs"),
                        "--name", "finished")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert (root / "runs" / "finished" / "best.tflite").is_file()
        return root / "runs" / "finished"

    return built_once(tmp_path_factory, "finished-run", build)


def tiny(
    *extra: str, backbone: str | None = "mobilenet_v2", batch: int | None = 8, export: bool = False
) -> list[str]:
    """The recipe tests train: no ImageNet weights, 32-pixel inputs, batches of ``batch`` and (unless
    ``export``) no end-of-run export, then ``extra``."""
    args = ["--backbone", backbone] if backbone else []
    args += ["--weights", "none", "--image-size", "32"]
    args += ["-b", str(batch)] if batch else []
    args += [] if export else ["--no-export"]
    return [*args, *extra]


def file_snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file below ``folder`` with its modification time and bytes: equal before and after a
    command that must only read the folder."""
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(result) -> str:
    """The single ``Error:`` line of a CLI result; fails on a traceback or several lines."""
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "unexpected" not in errors[0]  # an anticipated failure, not a bug's
    return errors[0]


# Lines that TensorFlow, LiteRT, absl, MLflow (and its database migrations) or FFmpeg print on their own,
# which a user's terminal or a job's log should never see from scenecls (--debug shows them).
FOREIGN_LINES = (
    "fully_quantize",
    "inference_type",
    "absl::InitializeLog",
    "cudart_stub",
    "cpu_feature_guard",
    "oneDNN",
    "I0000 00:00",
    "W0000 00:00",
    "INFO:tensorflow",
    "Saved artifact at",
    "XNNPACK",
    "INFO mlflow",
    "WARNING mlflow",
    "ERROR mlflow",
    "View run",  # MLflow's own prints when a run ends
    "View experiment",
    "alembic",
    "urllib3",  # its retries' warnings
    "site-packages",  # a library's warning names its file
    "dist-packages",
    "@ 0x",  # FFmpeg's "[h264 @ 0x55d...]"
)


def foreign_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that another library printed, not scenecls."""
    return [line for line in stderr.splitlines() if any(mark in line for mark in FOREIGN_LINES)]


class RecordingReporter:
    """A reporter that keeps what it is told, for tests that assert on warnings."""

    def __init__(self) -> None:
        self.logs: list[str] = []
        self.warnings: list[str] = []

    def log(self, message: str) -> None:
        self.logs.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def task(self, *args, **kwargs):
        from scenecls.progress import NullReporter

        return NullReporter().task(*args, **kwargs)


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
    endless: dict[str, int] = field(default_factory=dict)  # path -> declared length, then zeros until hung up
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
        if self.path in state.endless:
            self._send_endless(state.endless[self.path], state.content_type.get(self.path, "image/jpeg"))
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

    def _send_endless(self, declared: int, kind: str) -> None:
        """A body that claims ``declared`` bytes (0: no length) and streams zeros until the client stops."""
        self.send_response(200)
        if declared:
            self.send_header("Content-Length", str(declared))
        self.send_header("Content-Type", kind)
        self.end_headers()
        try:
            for _ in range(100_000):  # at most 6.5 GB: a client that never stops is a failed test
                self.wfile.write(bytes(65536))
        except OSError:
            pass


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
