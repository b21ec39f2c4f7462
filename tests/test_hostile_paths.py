"""Every path a command reads or writes, fed what is not a plain file or folder of the user's: a FIFO (a read
or write of it would block for ever), a device that never ends (``/dev/zero``: a read fills memory), a link,
a folder where a file goes (or a file where a folder goes) and a path under a file. Each is refused in one
line with a non-zero exit code, in seconds, and the thing itself is left as it was."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from scenecls.cli import cli
from tests.conftest import one_error_line, tiny, write_class_folders

TINY = tiny()
SECONDS = 60  # far more than any refusal takes; a read of a FIFO would take for ever


@contextlib.contextmanager
def deadline(seconds: int):
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: it waits on the path")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data set, a finished tiny run, and one of each hostile kind of path."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    write_class_folders(data / "train", 6, seed=1, size=32)
    write_class_folders(data / "test", 2, seed=2, size=32)
    result = CliRunner().invoke(cli, ["-q", "train", "--data", str(data), *TINY, "--epochs", "1",
                                      "--finetune-epochs", "0", "--project", str(root / "runs")])  # fmt: skip
    assert result.exit_code == 0, result.output
    kinds = root / "kinds"
    kinds.mkdir()
    os.mkfifo(kinds / "fifo")
    (kinds / "a-file").write_text("a user's file\n")
    (kinds / "folder").mkdir()
    (kinds / "folder" / "keep.txt").write_text("a user's file\n")
    (kinds / "link").symlink_to(kinds / "a-file")
    (kinds / "link-to-zero").symlink_to("/dev/zero")
    paths = {
        "fifo": kinds / "fifo",
        "dev-zero": Path("/dev/zero"),
        "link": kinds / "link",
        "link-to-zero": kinds / "link-to-zero",
        "folder": kinds / "folder",
        "a-file": kinds / "a-file",
        "under-a-file": kinds / "a-file" / "below",
    }
    try:  # a device node of our own where a command would write (never /dev itself)
        os.mknod(kinds / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
        paths["device"] = kinds / "zero"
    except PermissionError:
        pass
    return {"root": root, "data": data, "run": root / "runs" / "train", "image": next(data.rglob("*.jpg")),
            "paths": paths}  # fmt: skip


def _state(path: Path):
    """What a hostile path is, to see that nothing replaced or wrote through it."""
    if not (path.exists() or path.is_symlink()):
        return None
    st = os.lstat(path)
    content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
    return (st.st_mode, st.st_ino, content, sorted(os.listdir(path)) if stat.S_ISDIR(st.st_mode) else None)


# command line with {} where the path goes, and the kinds that must be refused there
FILE_OUT = ("fifo", "device", "link", "folder", "under-a-file")
FILE_IN = ("fifo", "dev-zero", "link-to-zero", "folder", "under-a-file")
FOLDER_OUT = ("fifo", "device", "link", "a-file", "under-a-file")
DATA_IN = ("fifo", "dev-zero", "link-to-zero", "under-a-file")
CASES = {
    "train --data": (["train", "--data", "{}", *TINY, "--project", "{root}/p"], DATA_IN),
    "train --exclude": (
        ["train", "--data", "{data}", "--exclude", "{}", *TINY, "--project", "{root}/p"],
        FILE_IN,
    ),
    "train --project": (["train", "--data", "{data}", *TINY, "--project", "{}"], FOLDER_OUT),
    "evaluate --data": (["evaluate", "{run}", "--data", "{}"], DATA_IN),
    "export --data": (["export", "{run}", "--data", "{}", "--output", "{root}/x.tflite"], DATA_IN),
    "export --output": (["export", "{run}", "--output", "{}"], FILE_OUT),
    "report --output": (["report", "{run}", "--no-eval", "--output", "{}"], FILE_OUT),
    "explain --output": (["explain", "{run}", "{image}", "--output", "{}"], FOLDER_OUT),
    "explain IMAGE": (
        ["explain", "{run}", "{}", "--output", "{root}/cams"],
        ("fifo", "dev-zero", "link-to-zero"),
    ),
    "predict IMAGE": (["predict", "{}", "--model", "{run}"], ("fifo", "dev-zero", "link-to-zero")),
    "predict --model": (["predict", "{image}", "--model", "{}"], ("fifo", "dev-zero", "link-to-zero")),
    "inspect DATA": (["inspect", "{}", "--no-features", "--output", "{root}/i"], DATA_IN),
    "inspect --output": (["inspect", "{data}", "--no-features", "--output", "{}"], FOLDER_OUT),
    "inspect --write-exclude": (
        ["inspect", "{data}", "--no-features", "--output", "{root}/i2", "--write-exclude", "{}"],
        FILE_OUT,
    ),
    "lr-find --data": (["lr-find", "--data", "{}", *TINY[:-1], "--project", "{root}/p"], DATA_IN),
    "lr-find --exclude": (["lr-find", "--data", "{data}", "--exclude", "{}", *TINY[:-1]], FILE_IN),
    "lr-find --output": (
        ["lr-find", "--data", "{data}", *TINY[:-1], "--steps", "5", "--output", "{}"],
        FILE_OUT,
    ),
    "fetch-data --from": (
        ["fetch-data", "--from", "{}", "--dest", "{root}/d"],
        ("fifo", "dev-zero", "link-to-zero"),
    ),
    "fetch-data --dest": (["fetch-data", "--from", "{data}", "--dest", "{}"], FOLDER_OUT),
    "finetune --data": (["finetune", "{run}", "--data", "{}", "--project", "{root}/p"], DATA_IN),
    "finetune --exclude": (["finetune", "{run}", "--exclude", "{}", "--project", "{root}/p"], FILE_IN),
    "sweep --data": (
        [
            "sweep",
            "--data",
            "{}",
            "--backbones",
            "mobilenet_v2",
            "--unfreeze",
            "0",
            "--dense",
            "0",
            *TINY[2:],
            "--project",
            "{root}/p",
        ],
        DATA_IN,
    ),
}


PER_INPUT = {"explain IMAGE", "predict IMAGE"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_path_option_refuses_what_is_not_a_plain_file_or_folder(world, case):
    template, kinds = CASES[case]
    tried = 0
    for kind in kinds:
        if kind not in world["paths"]:
            continue  # a device node of our own needs the right to make one
        hostile = world["paths"][kind]
        before = _state(hostile)
        values = {"root": world["root"], "data": world["data"], "run": world["run"], "image": world["image"]}
        args = [a.replace("{}", str(hostile)).format(**values) if "{" in a else a for a in template]
        with deadline(SECONDS):
            result = CliRunner().invoke(cli, args)
        assert result.exit_code not in (0, None), (case, kind, result.output)
        assert "Traceback" not in result.output, (case, kind)
        if case in PER_INPUT:  # an input that cannot be read is a row of its own, not the end of the command
            assert result.exit_code == 4 and "could be" in result.stderr, (case, kind, result.output)
        else:
            one_error_line(result)
        assert _state(hostile) == before, (case, kind)
        tried += 1
    assert tried
