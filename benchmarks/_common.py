"""Helpers shared by the benchmark scripts: real images when ../shared has them, else generated ones."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_ZIP = SHARED / "data" / "intel-mini.zip"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_ptq_no_top.weights.h5"


def dataset(workdir: Path | None = None) -> tuple[Path, str]:
    """A data-set folder and a word on where it came from."""
    from scenecls.data.fetch import fetch_dataset

    workdir = workdir or Path(tempfile.mkdtemp(prefix="scenecls-bench-"))
    if SHARED_ZIP.exists():
        dest = workdir / "intel-mini"
        fetch_dataset(dest, source=SHARED_ZIP)
        return dest, "real Intel images (shared intel-mini.zip)"
    return generated(workdir / "generated"), "generated 150x150 images (shared data not found)"


def named_dataset(name: str, workdir: Path) -> Path:
    """``name`` as a folder: a folder itself, or ``intel-mini`` / ``intel-dev`` unpacked from ../shared
    into ``workdir`` as a user would (``fetch-data --from``). Exits with a message when neither."""
    import sys

    from scenecls.data.fetch import fetch_dataset

    if Path(name).exists():
        return Path(name)
    archive = SHARED / "data" / f"{name}.zip"
    if not archive.is_file():
        sys.exit(f"no data: {name} is neither a folder nor {archive}")
    fetch_dataset(workdir / name, source=archive)
    return workdir / name


def images_by_class(split: Path) -> dict[str, list[str]]:
    """``split/<class>/<file>`` as class -> sorted paths of its files."""
    folders = sorted(p for p in split.iterdir() if p.is_dir())
    return {f.name: sorted(str(p) for p in f.iterdir() if p.is_file()) for f in folders}


def linked_folder(folder: Path, images: dict[str, list[str]]) -> Path:
    """``folder/<class>/<name>``: a hard link to each image (``images``: class -> paths), or a copy where
    the image lives on another file system."""
    import shutil

    for name, paths in images.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for path in paths:
            target = folder / name / Path(path).name
            if not target.exists():
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copy2(path, target)
    return folder


def run_scenecls(args: list[str], home: Path) -> str:
    """``scenecls -q ARGS`` in a fresh process with ``home`` as its SCENECLS_HOME; its stdout.
    Exits with scenecls's error when it fails."""
    import subprocess
    import sys

    env = {**os.environ, "SCENECLS_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "scenecls", "-q", *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"scenecls {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def run_scenecls_peak(args: list[str], home: Path) -> tuple[str, int, int | None]:
    """``scenecls -q ARGS`` in a fresh process with ``home`` as its SCENECLS_HOME: its stdout, its peak
    resident bytes, and the peak of its anonymous resident bytes (``RssAnon``, sampled ten times a
    second; None where /proc has no such line): the memory the system cannot take back, unlike the pages
    of a memory-mapped file, which the first figure counts as well. Exits with scenecls's error when it
    fails."""
    import subprocess
    import sys
    import threading
    import time

    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SCENECLS_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "scenecls", "-q", *args], env=env, stdout=out,
                                   stderr=err)  # fmt: skip
        anonymous: list[int] = []
        done = threading.Event()
        sampler = threading.Thread(target=_sample_anonymous, args=(process.pid, anonymous, done), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        done.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            err.seek(0)
            sys.exit(f"scenecls {' '.join(args)} failed after {time.perf_counter() - started:.0f} s: "
                     f"{err.read().strip()}")  # fmt: skip
        out.seek(0)
        per_unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        return out.read(), usage.ru_maxrss * per_unit, max(anonymous) if anonymous else None


def _sample_anonymous(pid: int, peaks: list[int], done) -> None:
    """Append ``pid``'s ``RssAnon`` (bytes) to ``peaks`` every tenth of a second until ``done``."""
    status = Path(f"/proc/{pid}/status")
    while not done.wait(0.1):
        try:
            line = next(line for line in status.read_text().splitlines() if line.startswith("RssAnon:"))
        except (OSError, StopIteration):
            continue
        peaks.append(int(line.split()[1]) * 1024)


def folder_bytes(folder: Path) -> int:
    """The bytes of the files below ``folder`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def generated(root: Path, per_class: int = 250, size: int = 150) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(6):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] //= 2
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
