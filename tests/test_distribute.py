"""--distribute: MirroredStrategy over two logical CPU devices, and a two-worker cluster on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scenecls.errors import UsageError
from scenecls.training import strategy
from tests.conftest import tiny, write_class_folders

pytestmark = pytest.mark.slow  # trains several models: left out of the fast lane (-m "not slow")

TINY = tiny(
    "--dense", "1", "--dropout", "0", "--lr", "0.01", "--finetune-lr", "0.001", "--format", "json", batch=None
)

# The CLI in a process whose one CPU is split into two logical devices, as a machine with two GPUs
# would show them to MirroredStrategy.
TWO_DEVICES = """
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from scenecls.cli import main

sys.argv[0] = "scenecls"
main()
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distribute-data")
    write_class_folders(root / "train", 8, size=32)
    write_class_folders(root / "test", 2, seed=3, size=32)
    return root


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "SCENECLS_HOME": str(tmp_path / "home"), "TF_CPP_MIN_LOG_LEVEL": "3", **extra}
    env.pop("TF_CONFIG", None)
    return {**env, **extra}


def _history(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------- choosing


def test_auto_uses_a_cluster_then_several_gpus_else_nothing():
    cluster = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}, "tasks": 2}
    assert strategy.resolve_mode("auto", gpus=0, cluster=None) == "off"
    assert strategy.resolve_mode("auto", gpus=1, cluster=None) == "off"
    assert strategy.resolve_mode("auto", gpus=2, cluster=None) == "mirrored"
    assert strategy.resolve_mode("auto", gpus=4, cluster=cluster) == "multiworker"
    assert strategy.resolve_mode("mirrored", gpus=0, cluster=None) == "mirrored"  # asked for: as asked
    with pytest.raises(UsageError):
        strategy.resolve_mode("horovod", gpus=0, cluster=None)


def test_tf_config_is_read_and_checked(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert strategy.cluster_from_env() is None
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 0}})
    )
    assert strategy.cluster_from_env() is None  # one task is no cluster
    two = {"cluster": {"chief": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(two))
    assert strategy.cluster_from_env()["tasks"] == 2
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UsageError, match="TF_CONFIG is not valid JSON"):
        strategy.cluster_from_env()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": two["cluster"]}))
    with pytest.raises(UsageError, match="not this task"):
        strategy.cluster_from_env()
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(UsageError, match="multiworker needs TF_CONFIG"):
        strategy.choose("multiworker")


def test_resume_refuses_another_cluster_shape(tmp_path):
    two = strategy.Distribution("mirrored", None, replicas=2)
    two.check_resume({"mode": "mirrored", "workers": 1, "replicas": 2}, tmp_path)  # same shape: fine
    strategy.OFF.check_resume(None, tmp_path)  # a run from before --distribute: one replica
    with pytest.raises(UsageError, match="trained on 1 replica, this process has 2 replicas"):
        two.check_resume(None, tmp_path)
    with pytest.raises(UsageError, match="--distribute multiworker"):
        strategy.OFF.check_resume({"mode": "multiworker", "workers": 2, "replicas": 2}, tmp_path)


# ------------------------------------------------------------------------------------------ mirrored


def test_mirrored_over_two_devices_trains_like_one(tmp_path, data):
    """The same run on one device (batch 8) and mirrored over two (4 per replica, global 8): the same
    history within float noise, since each step averages the same 8 images' gradients."""
    runner = tmp_path / "two_devices.py"
    runner.write_text(TWO_DEVICES)
    common = [*TINY, "--data", str(data), "--project", str(tmp_path / "runs"), "--epochs", "3",
              "--finetune-epochs", "2"]  # fmt: skip
    env = _env(tmp_path)

    def train(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(runner), "train", *common, *extra]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

    one = train("-b", "8", "--name", "one", "--distribute", "off")
    assert one.returncode == 0, one.stderr
    two = train("-b", "4", "--name", "two", "--distribute", "mirrored")
    assert two.returncode == 0, two.stderr
    assert "global batch 8 = 4 per replica x 2" in two.stderr
    config = json.loads((tmp_path / "runs" / "two" / "config.json").read_text())
    assert config["distribution"] == {"mode": "mirrored", "workers": 1, "replicas": 2}
    assert config["batch_size"] == 4  # per replica, as given
    alone, mirrored = _history(tmp_path / "runs" / "one"), _history(tmp_path / "runs" / "two")
    assert [r["phase"] for r in alone] == [r["phase"] for r in mirrored] == ["head"] * 3 + ["finetune"] * 2
    for a, m in zip(alone, mirrored, strict=True):
        for key in ("loss", "val_loss"):
            # Tolerance: a few 1e-4 seen here (summation order on two devices; Adam's normalised steps
            # turn tiny gradient differences of a barely trained net into visible ones).
            assert float(m[key]) == pytest.approx(float(a[key]), abs=2e-3), (a["epoch"], key)
        assert float(m["val_accuracy"]) == pytest.approx(float(a["val_accuracy"]), abs=0.13), a["epoch"]
    for a, m in zip(alone[:3], mirrored[:3], strict=True):  # the head on cached features: the same sums
        # ... up to the order of the threads' partial sums: 2e-4 was seen once on a busy machine.
        assert float(m["loss"]) == pytest.approx(float(a["loss"]), abs=5e-4)


# -------------------------------------------------------------------------------------- multi-worker


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _cluster(tmp_path: Path, args: list[str]) -> list[subprocess.Popen]:
    """Two `scenecls` processes forming one cluster; each with its own temporary folder."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in (1, 0):  # the worker first: the chief then finds it listening
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir(exist_ok=True)
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        env = _env(tmp_path, TF_CONFIG=tf_config, TMPDIR=str(scratch))
        command = [sys.executable, "-m", "scenecls", *args]
        processes.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    return processes[::-1]  # chief, worker


def test_two_workers_train_one_run_that_only_the_chief_writes(tmp_path, data):
    project = tmp_path / "runs"
    # Augmented cached copies in both caches: their layers' seed states are variables, which every
    # process must make (collectively) although only the chief builds the entries.
    args = ["train", *TINY, "--data", str(data), "--project", str(project), "--name", "cluster", "-b", "4",
            "--epochs", "2", "--finetune-epochs", "2", "--cache-aug", "1"]  # fmt: skip
    chief, worker = _cluster(tmp_path, args)
    (out, err), (wout, werr) = chief.communicate(timeout=600), worker.communicate(timeout=600)
    assert (chief.returncode, worker.returncode) == (0, 0), (err, werr)
    assert "global batch 8 = 4 per replica x 2" in err
    result = json.loads(out)
    assert result["status"] == "finished" and result["epochs"] == 4 and result["test_accuracy"] is not None
    assert wout == "" and "worker 1 of 2" in werr  # results are the chief's to print
    assert [p.name for p in project.iterdir()] == ["cluster"]  # the worker made no run folder
    run = project / "cluster"
    assert {"config.json", "labels.json", "history.csv", "best.keras", "last.keras", "state.json",
            "metrics.json"} <= {p.name for p in run.iterdir()}  # fmt: skip
    assert json.loads((run / "state.json").read_text())["status"] == "finished"
    assert [int(r["epoch"]) for r in _history(run)] == [1, 2, 3, 4]
    # One feature cache entry, built by the chief and read by the worker.
    assert len(list((tmp_path / "home" / "cache" / "features").iterdir())) == 1
    assert "Feature cache: built" in err and "Feature cache: reusing" in werr
    assert "Activation cache: built" in err and "Activation cache: reusing" in werr
    assert list((tmp_path / "tmp1").iterdir()) == []  # the worker's scratch copy is gone


def _epochs_saved(run: Path) -> int:
    try:
        return json.loads((run / "state.json").read_text())["epoch"]
    except (OSError, ValueError):
        return 0


def test_a_killed_worker_ends_the_chief_with_a_resumable_run(tmp_path, data):
    project = tmp_path / "runs"
    args = ["train", *TINY, "--data", str(data), "--project", str(project), "--name", "cluster", "-b", "4",
            "--epochs", "2", "--finetune-epochs", "5"]  # fmt: skip
    chief, worker = _cluster(tmp_path, args)
    deadline = time.monotonic() + 300
    while _epochs_saved(project / "cluster") < 3:
        assert time.monotonic() < deadline and chief.poll() is None, chief.stderr.read()
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    _, err = chief.communicate(timeout=300)
    assert chief.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: a process of the cluster stopped") and "--resume" in last, err
    assert "Traceback" not in err and "{{function_node" not in last
    state = json.loads((project / "cluster" / "state.json").read_text())
    assert state["status"] == "failed" and state["epoch"] >= 3
    assert (project / "cluster" / "last.keras").is_file()

    # Another shape is refused; the same cluster again finishes the run.
    command = [
        sys.executable,
        "-m",
        "scenecls",
        "train",
        "--resume",
        str(project / "cluster"),
        "--distribute",
        "off",
    ]
    alone = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True)
    assert alone.returncode == 2 and "trained on 2 workers" in alone.stderr
    chief, worker = _cluster(tmp_path, ["train", "--resume", str(project / "cluster"), "--format", "json"])
    (out, err), (_, werr) = chief.communicate(timeout=600), worker.communicate(timeout=600)
    assert (chief.returncode, worker.returncode) == (0, 0), (err, werr)
    assert json.loads(out)["status"] == "finished"
    assert [int(r["epoch"]) for r in _history(project / "cluster")] == list(range(1, 8))
