"""Tracking in MLflow, against a real ``mlflow server`` on 127.0.0.1 (a free port, a temporary store):
a run's options, every epoch, final metrics, files and status; resumed, extended, failed and
interrupted runs; a sweep's parent and its shards' children; a server that is down or goes away."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from scenecls.cli import cli
from scenecls.tracking.messages import safe_uri
from scenecls.tracking.mlflow_run import epoch_metrics, final_metrics, flatten
from tests.conftest import ctrl_c_at_batch, foreign_lines, tiny, write_class_folders

HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None
if not HAVE_MLFLOW and os.environ.get("CI"):
    raise RuntimeError("the tracking tests need MLflow (the test extra): pip install -e '.[test]'")
needs_server = [
    pytest.mark.skipif(not HAVE_MLFLOW, reason="needs the mlflow package (pip install -e '.[test]')"),
    pytest.mark.slow,
]
TINY = tiny("--dense", "0", batch=None, export=True)
SECRET = "s3cr3t-never-written"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(store: Path, port: int) -> subprocess.Popen:
    store.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--workers",
        "1",
    ]
    log = open(store / "server.log", "ab")  # noqa: SIM115 - the server's, closed with it
    server = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer,
        ):
            if answer.status == 200:
                return server
        if server.poll() is not None:
            break
        time.sleep(0.3)
    _stop(server)
    raise RuntimeError(f"mlflow server did not start: {(store / 'server.log').read_text()[-2000:]}")


def _stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # uvicorn and its workers
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real tracking server for the module: its URI."""
    store, port = tmp_path_factory.mktemp("mlflow"), _free_port()
    process = _start_server(store, port)
    yield f"http://127.0.0.1:{port}"
    _stop(process)


@pytest.fixture
def tracked(server, monkeypatch):
    """MLflow's own environment, as a user sets it: the server, and credentials that must stay secret."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    from mlflow.tracking import MlflowClient

    return MlflowClient(server)


def _runs(client, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def _steps(client, run_id: str, key: str = "val_accuracy") -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run_id, key))


def _no_secret_in(folder: Path, *outputs: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert all(SECRET not in text for text in outputs)


def test_params_flatten_within_limits_and_addresses_lose_their_secrets():
    flat = flatten({"augment": {"zoom": 0.1, "flip": True}, "lr": 1e-3, "long": "x" * 7000})
    assert flat == {"augment.zoom": "0.1", "augment.flip": "True", "lr": "0.001", "long": "x" * 6000}
    assert safe_uri("https://bob:pw@mlflow.example:8443/path") == "https://mlflow.example:8443/path"
    assert epoch_metrics({"epoch": 3, "phase": "finetune2", "loss": 0.5, "val_loss": None, "lr": 1e-4}) == {
        "loss": 0.5,
        "lr": 1e-4,
        "phase": 3.0,
    }
    calibration = {"test": {"after": {"ece": 0.02, "nll": 0.3, "brier": 0.1}}}
    final = final_metrics(
        {"test_accuracy": 0.9, "seconds": 12.0, "best_val_accuracy": None, "calibration": calibration}
    )
    assert final == {
        "test_accuracy": 0.9,
        "run_seconds": 12.0,
        "test_ece": 0.02,
        "test_nll": 0.3,
        "test_brier": 0.1,
    }


@needs_server[0]
@needs_server[1]
def test_a_run_its_epochs_files_and_status_and_its_resumption_in_mlflow(tracked, tmp_path, monkeypatch):
    client = tracked
    data = write_class_folders(tmp_path / "data", 8)
    runs_dir = tmp_path / "runs"
    args = [
        "train",
        "--data",
        str(data),
        *TINY,
        "--epochs",
        "2",
        "--finetune-epochs",
        "2",
        "--unfreeze",
        "1",
        "--project",
        str(runs_dir),
        "--name",
        "tracked",
        "--mlflow-experiment",
        "exp-run",
        "--format",
        "json",
    ]
    with ctrl_c_at_batch(monkeypatch, 4):  # during the fine-tuning phase: killed
        stopped = CliRunner().invoke(cli, args)
    assert stopped.exit_code == 130, stopped.output
    (run,) = _runs(client, "exp-run")
    assert run.info.status == "KILLED" and run.info.run_name == "tracked"
    state = json.loads((runs_dir / "tracked" / "state.json").read_text())
    assert state["mlflow_run_id"] == run.info.run_id
    assert _steps(client, run.info.run_id) == list(range(1, state["epoch"] + 1))
    resumed = CliRunner().invoke(
        cli,
        [
            "train",
            "--resume",
            str(runs_dir / "tracked"),
            "--format",
            "json",
            "--mlflow-experiment",
            "exp-run",
        ],
    )
    assert resumed.exit_code == 0, resumed.output
    json.loads(resumed.stdout)  # MLflow printed nothing on stdout
    (run,) = _runs(client, "exp-run")  # the same MLflow run went on
    assert run.info.status == "FINISHED" and _steps(client, run.info.run_id) == [1, 2, 3, 4]
    assert _steps(client, run.info.run_id, "phase") == [1, 2, 3, 4]
    assert [
        m.value for m in sorted(client.get_metric_history(run.info.run_id, "phase"), key=lambda m: m.step)
    ] == [1, 1, 2, 2]
    params = run.data.params
    assert (
        params["backbone"] == "mobilenet_v2" and params["augment.zoom"] == "0.1" and params["epochs"] == "2"
    )
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(
        json.loads(resumed.stdout)["best_val_accuracy"]
    )
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "history.csv", "metrics.json", "labels.json", "best.tflite", "labels.txt"} <= files
    assert "best.keras" not in files  # large: only with --mlflow-log-model
    # Extended: the same run, more epochs.
    more = CliRunner().invoke(
        cli,
        [
            "train",
            "--resume",
            str(runs_dir / "tracked"),
            "--finetune-epochs",
            "3",
            "--mlflow-experiment",
            "exp-run",
            "-q",
        ],
    )
    assert more.exit_code == 0, more.output
    (run,) = _runs(client, "exp-run")
    assert run.info.status == "FINISHED" and _steps(client, run.info.run_id) == [1, 2, 3, 4, 5]
    # evaluate logs its figures into the same run.
    evaluated = CliRunner().invoke(
        cli, ["evaluate", str(runs_dir / "tracked"), "--mlflow-experiment", "exp-run", "--format", "json"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    (run,) = _runs(client, "exp-run")
    assert run.data.metrics["eval_accuracy"] == pytest.approx(json.loads(evaluated.stdout)["accuracy"])
    assert "evaluation.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    _no_secret_in(runs_dir, stopped.output, resumed.output, more.output, evaluated.output)


@needs_server[0]
@needs_server[1]
def test_a_failed_run_is_failed_in_mlflow_with_its_reason(tracked, tmp_path, monkeypatch):
    from scenecls.training import recipe

    monkeypatch.setattr(recipe, "learning_rate", lambda phase, config, steps: 1e38)  # diverges at once
    data = write_class_folders(tmp_path / "data", 6)
    args = [
        "train",
        "--data",
        str(data),
        *["--backbone", "mobilenet_v2", "--weights", "none", "--image-size", "32", "-b", "8", "--lr", "10"],
        *["--epochs", "3", "--finetune-epochs", "0", "--no-export"],
        "--project",
        str(tmp_path / "runs"),
        "--mlflow-experiment",
        "exp-failed",
        "-q",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    (run,) = _runs(tracked, "exp-failed")
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["scenecls.error"]


@needs_server[0]
@needs_server[1]
def test_two_shards_attach_their_runs_to_one_parent_and_collect_logs_the_tables(tracked, tmp_path):
    data = write_class_folders(tmp_path / "data", 6)
    base = [
        "sweep",
        "--data",
        str(data),
        "--backbones",
        "mobilenet_v2",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--dense",
        "0,1",
        "--unfreeze",
        "1",
        "--epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--project",
        str(tmp_path / "runs"),
        "--mlflow-experiment",
        "exp-sweep",
        "-q",
    ]
    for shard in ("1/2", "2/2"):  # as two jobs on two machines would
        result = CliRunner().invoke(cli, [*base, "--shard", shard])
        assert result.exit_code == 0, result.output
    collected = CliRunner().invoke(cli, [*base, "--collect"])
    assert collected.exit_code == 0, collected.output
    found = _runs(tracked, "exp-sweep")
    sweep_id = json.loads((tmp_path / "runs" / "sweep" / "sweep.json").read_text())["id"]
    (parent,) = [r for r in found if r.data.tags.get("scenecls.sweep_id") == sweep_id]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(found) == 3 and sorted(r.info.run_name for r in children) == [
        "mobilenet_v2-d0-u1",
        "mobilenet_v2-d1-u1",
    ]
    assert all(r.info.status == "FINISHED" for r in children) and parent.info.status == "FINISHED"
    files = {a.path for a in tracked.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "results.json", "heatmap_mobilenet_v2.png"} <= files


@needs_server[0]
@needs_server[1]
def test_a_server_that_is_down_costs_nothing_and_log_mlflow_sends_the_run_later(
    tracked, server, tmp_path, monkeypatch
):
    data = write_class_folders(tmp_path / "data", 6)
    # Nobody listens; the address carries a password, which no line printed may show.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@127.0.0.1:{_free_port()}")
    args = [
        "train",
        "--data",
        str(data),
        *TINY,
        "--epochs",
        "2",
        "--finetune-epochs",
        "0",
        "--project",
        str(tmp_path / "runs"),
        "--name",
        "offline",
        "--mlflow-experiment",
        "exp-later",
    ]
    started = time.monotonic()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 60  # no minutes of retries
    warnings = [line for line in result.stderr.splitlines() if "MLflow" in line]
    assert len(warnings) == 2 and "training goes on" in warnings[0]
    assert "scenecls log-mlflow" in warnings[1] and "Traceback" not in result.output
    assert SECRET not in result.output and "http://***@127.0.0.1" in warnings[0]
    run_dir = tmp_path / "runs" / "offline"
    assert (run_dir / "metrics.json").is_file() and (run_dir / "best.keras").is_file()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    sent = CliRunner().invoke(cli, ["log-mlflow", str(run_dir), "--mlflow-experiment", "exp-later"])
    assert sent.exit_code == 0, sent.output
    again = CliRunner().invoke(cli, ["log-mlflow", str(run_dir), "--mlflow-experiment", "exp-later"])
    assert again.exit_code == 0, again.output
    (run,) = _runs(tracked, "exp-later")  # sent twice, logged once
    assert run.info.status == "FINISHED" and run.info.run_name == "offline"
    assert _steps(tracked, run.info.run_id) == [1, 2] and "history.csv" in {
        a.path for a in tracked.list_artifacts(run.info.run_id)
    }

    # Two log-mlflow of one run folder at once: the second waits for the first, then sends nothing new.
    state = json.loads((run_dir / "state.json").read_text())
    (run_dir / "state.json").write_text(json.dumps({**state, "mlflow_run_id": None}))
    command = [
        sys.executable,
        "-m",
        "scenecls",
        "log-mlflow",
        str(run_dir),
        "--mlflow-experiment",
        "exp-twice",
    ]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    env["MLFLOW_TRACKING_URI"] = server
    both = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300)[1] for p in both]
    assert [p.returncode for p in both] == [0, 0], logs
    assert not foreign_lines("".join(logs)), logs  # neither MLflow's nor its database's own lines
    (twice,) = _runs(tracked, "exp-twice")
    assert twice.info.run_id == json.loads((run_dir / "state.json").read_text())["mlflow_run_id"]

    # No URI at all: MLflow's default store, in the current folder, named where the user can find it.
    here = tmp_path / "cwd"
    here.mkdir()
    env.pop("MLFLOW_TRACKING_URI")
    local = subprocess.run(command, env=env, cwd=here, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr
    assert f"default store sqlite:///{here / 'mlflow.db'}" in local.stderr and (here / "mlflow.db").is_file()
    assert not foreign_lines(local.stderr), local.stderr

    # That store opened read-only: refused at once in one line each, without MLflow's SQL or traceback.
    state = json.loads((run_dir / "state.json").read_text())
    (run_dir / "state.json").write_text(json.dumps({**state, "mlflow_run_id": None}))
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///file:{here / 'mlflow.db'}?mode=ro&uri=true"
    started = time.monotonic()
    refused = subprocess.run(command, env=env, cwd=here, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and time.monotonic() - started < 60, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert lines[0] == "Warning: MLflow: attempt to write a readonly database; nothing more is sent", lines
    assert len(lines) == 2 and "did not get the run" in lines[1], lines


@needs_server[0]
@needs_server[1]
def test_a_server_killed_mid_run_costs_one_warning_and_nothing_of_the_run(tmp_path):
    """A real process trains while its server is killed after the first epoch arrives."""
    from mlflow.tracking import MlflowClient

    data = write_class_folders(tmp_path / "data", 8)
    store, port = tmp_path / "store", _free_port()
    server = _start_server(store, port)
    uri = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    env["MLFLOW_TRACKING_URI"] = uri
    args = [
        sys.executable,
        "-m",
        "scenecls",
        "train",
        "--data",
        str(data),
        *TINY,
        "--epochs",
        "8",
        "--finetune-epochs",
        "0",
        "--no-cache",
        "--project",
        str(tmp_path / "runs"),
        "--name",
        "cut",
        "--mlflow-experiment",
        "exp-cut",
        "--format",
        "json",
    ]
    training = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = MlflowClient(uri)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and training.poll() is None:
            found = _runs(client, "exp-cut")
            if found and _steps(client, found[0].info.run_id, "loss"):
                break
            time.sleep(0.2)
        run_id = _runs(client, "exp-cut")[0].info.run_id
    finally:
        _stop(server)
    stdout, stderr = training.communicate(timeout=300)
    assert training.returncode == 0, stderr
    assert json.loads(stdout)["status"] == "finished"
    warnings = [line for line in stderr.splitlines() if "MLflow" in line and "Warning" in line]
    assert len(warnings) == 2 and "training goes on" in warnings[0] and "log-mlflow" in warnings[1], stderr
    assert not foreign_lines(stderr), stderr  # scenecls's two warnings, not MLflow's retries
    history = (tmp_path / "runs" / "cut" / "history.csv").read_text().splitlines()
    assert len(history) == 9  # every epoch in the run folder
    server = _start_server(store, port)  # the server is back: send what it missed
    try:
        sent = subprocess.run(
            [
                sys.executable,
                "-m",
                "scenecls",
                "log-mlflow",
                str(tmp_path / "runs" / "cut"),
                "--mlflow-experiment",
                "exp-cut",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert sent.returncode == 0, sent.stderr
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and _steps(client, run_id, "loss") == list(range(1, 9))
    finally:
        _stop(server)
