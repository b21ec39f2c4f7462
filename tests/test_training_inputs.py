"""Training with broken inputs and failures on the way (divergence, a full disk, a kill before the first
epoch): one line, the right exit code, and every saved epoch kept."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from scenecls.cli import cli
from tests.conftest import RecordingReporter, ctrl_c_at_batch, one_error_line, tiny, write_class_folders

# ------------------------------------------------------------------------------------- training

TINY = tiny()


def strict_json(path: Path):
    """Parse as standard JSON: ``NaN`` and ``Infinity`` are refused."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    write_class_folders(root / "train", 8, seed=1, size=40)
    return root


def train_cli(*args: str):
    return CliRunner().invoke(cli, ["train", *args])


def test_diverged_training_fails_with_advice_and_valid_json(small_set, tmp_path, monkeypatch):
    from scenecls.training import recipe

    # The command line refuses a rate above 10, so the rate that makes the run diverge at its first
    # step (1e38, as a bad schedule or a bug would) is given to the optimizer directly.
    monkeypatch.setattr(recipe, "learning_rate", lambda phase, config, steps: 1e38)
    project = tmp_path / "runs"
    result = train_cli(
        "--data", str(small_set), *TINY, "--epochs", "3", "--finetune-epochs", "0", "--lr", "10",
        "--project", str(project), "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "diverged" in line and "lower --lr" in line
    assert result.stdout == ""  # no summary, no Keras message among the results
    run = project / "train"
    state = strict_json(run / "state.json")
    assert state["status"] == "failed" and "diverged" in state["error"]
    assert not (run / "best.keras").exists()  # nothing non-finite is ever kept as best


def test_predict_refuses_labels_that_do_not_fit_the_model(small_set, tmp_path):
    project = tmp_path / "runs"
    trained = train_cli(
        "--data", str(small_set), *TINY, "--epochs", "1", "--finetune-epochs", "0", "--project", str(project)
    )
    assert trained.exit_code == 0, trained.output
    run = project / "train"
    assert oct((run / "config.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    labels = json.loads((run / "labels.json").read_text())
    labels["classes"] = labels["classes"][:2]
    (run / "labels.json").write_text(json.dumps(labels))
    image = next((small_set / "train" / "alpha").iterdir())
    result = CliRunner().invoke(cli, ["predict", str(image), "--model", str(run)])
    assert result.exit_code == 1
    assert "labels name 2" in one_error_line(result)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--unfreeze", "99"], 2, "--unfreeze 99: this backbone has 18 blocks"),
        (["--unfreeze", "1,99"], 2, "--unfreeze 99"),
        (["--val-split", "1"], 2, "--val-split"),
        (["--weights", "."], 1, "is a folder"),
    ],
)
def test_bad_training_options_leave_no_run_folder(small_set, tmp_path, args, code, message):
    project = tmp_path / "runs"
    result = train_cli("--data", str(small_set), *TINY, "--epochs", "1", *args, "--project", str(project))
    assert result.exit_code == code
    assert message in one_error_line(result)
    assert not (project / "train").exists()


def test_one_image_per_class_is_a_clear_error(tmp_path):
    data = write_class_folders(tmp_path / "one", 1, size=16)
    project = tmp_path / "runs"
    result = train_cli("--data", str(data), *TINY, "--project", str(project))
    assert result.exit_code == 1
    assert "no validation images" in one_error_line(result)
    assert not (project / "train").exists()
    again = train_cli("--data", str(data), *TINY, "--project", str(project))
    assert "Run folder: " + str(project / "train") in again.stderr  # not train2


def test_non_utf8_file_names_train(tmp_path):
    data = write_class_folders(tmp_path / "set", 6, size=16)
    odd = data / "alpha" / os.fsdecode(b"bad\xffbyte.jpg")
    Image.new("RGB", (16, 16), (200, 40, 40)).save(odd, format="JPEG")
    (data / "beta" / os.fsdecode(b"broken\xfe.jpg")).write_bytes(b"not a jpeg")
    project = tmp_path / "runs"
    result = train_cli(
        "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "0", "--project", str(project)
    )
    assert result.exit_code == 0, result.output
    config = strict_json(project / "train" / "config.json")
    assert config["images"]["skipped"] == 1 and config["images"]["train"] + config["images"]["val"] == 19
    assert "broken" in result.stderr


def test_empty_class_folder_is_reported(tmp_path):
    from scenecls.data.pipeline import prepare_data

    data = write_class_folders(tmp_path / "set", 3, size=16)
    (data / "delta").mkdir()
    (data / "delta" / "notes.txt").write_text("no images yet")
    reporter = RecordingReporter()

    prepared = prepare_data(data, reporter=reporter, cache_root=tmp_path / "cache")
    assert prepared.classes == ["alpha", "beta", "gamma"]
    assert any("delta" in w and "no images" in w for w in reporter.warnings)


@pytest.mark.slow
def test_killed_before_the_first_epoch_resumes(small_set, tmp_path):
    """SIGKILL while the model is being built: the run folder says where it stands, --resume finishes it,
    and a half-written temporary file of a killed save is cleaned up."""
    import signal
    import time

    project = tmp_path / "runs"
    args = [
        "--data",
        str(small_set),
        *TINY,
        "--epochs",
        "1",
        "--finetune-epochs",
        "0",
        "--project",
        str(project),
    ]
    env = {**os.environ, "SCENECLS_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(
        [sys.executable, "-m", "scenecls", "-q", "train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = project / "train" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert state.exists() and not (project / "train" / "history.csv").exists()
    stale = project / "train" / ".last.keras.abcd1234.keras"
    stale.write_bytes(b"half a model")
    launched = time.monotonic()
    resumed = subprocess.run(
        [sys.executable, "-m", "scenecls", "train", "--resume", str(project / "train")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.monotonic() - launched
    assert resumed.returncode == 0, resumed.stderr
    assert strict_json(state)["status"] == "finished"
    assert not stale.exists()
    # the resuming process's own wait for its first batch: Python and TensorFlow started, not the test's
    assert 0.5 < strict_json(project / "train" / "metrics.json")["first_batch_seconds"] < wall


def test_predict_explains_a_missing_model_in_phase_one(tmp_path):
    from scenecls import runs

    run = tmp_path / "runs" / "train"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    state = {"status": "running", "epoch": 31, "phase": 0, "head_checkpoint": True}
    (run / "state.json").write_text(json.dumps(state))
    with pytest.raises(Exception, match="phase 1 after 31 epochs"):
        runs.resolve_model(str(run), tmp_path / "runs")


@pytest.mark.slow
def test_feature_cache_status_survives_a_resume_in_fine_tuning(small_set, tmp_path, monkeypatch):
    project = tmp_path / "runs"
    args = ["--data", str(small_set), *TINY, "-b", "12", "--epochs", "1", "--finetune-epochs", "2",
            "--unfreeze", "1", "--project", str(project)]  # fmt: skip
    with ctrl_c_at_batch(monkeypatch, 5):  # 2 batches of the head epoch, 2 of fine-tuning, then this
        assert train_cli(*args).exit_code == 130
    phase_one = strict_json(project / "train" / "state.json")["feature_cache"]
    assert phase_one in ("built", "reused")  # reused when an earlier test cached these images
    assert train_cli("--resume", str(project / "train")).exit_code == 0
    assert strict_json(project / "train" / "metrics.json")["feature_cache"] == phase_one


def test_disk_full_while_training_keeps_the_saved_epochs(small_set, tmp_path, monkeypatch):
    from scenecls.classifier import load_model
    from scenecls.training import checkpoints

    real_save = checkpoints.save_model
    calls = {"n": 0}

    def save_then_fill_the_disk(model, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's checkpoint
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(model, path)

    monkeypatch.setattr(checkpoints, "save_model", save_then_fill_the_disk)
    project = tmp_path / "runs"
    result = train_cli(
        "--data", str(small_set), *TINY, "--epochs", "0", "--finetune-epochs", "3", "--unfreeze", "1",
        "--project", str(project),
    )  # fmt: skip
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "No space left on device" in line and "intact" in line
    run = project / "train"
    assert strict_json(run / "state.json")["status"] == "failed"
    assert load_model(run / "best.keras").output_shape == (None, 3)
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


SHARED_CACHE = Path(__file__).resolve().parents[2] / "shared" / "weights" / "keras-cache" / "models"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CACHE.is_dir(), reason="needs ../shared/weights (real MobileNetV2 weights)")
def test_quiet_imagenet_training_prints_nothing_on_stderr(small_set, tmp_path):
    """Keras warns that its 224-pixel file is loaded into another input size; with -q nothing shows."""
    keras_home = tmp_path / "keras"
    (keras_home / "models").mkdir(parents=True)
    for weights in SHARED_CACHE.glob("*.h5"):
        (keras_home / "models" / weights.name).symlink_to(weights)
    env = {**os.environ, "KERAS_HOME": str(keras_home), "SCENECLS_HOME": str(tmp_path / "home")}
    args = ["--data", str(small_set), "--backbone", "mobilenet_v2", "--weights", "imagenet",
            "--image-size", "64", "-b", "8", "--epochs", "1", "--finetune-epochs", "0",
            "--project", str(tmp_path / "runs")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "scenecls", "train", *args, "-q", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout)["status"] == "finished"


def test_uncached_imagenet_weights_fail_before_any_folder_or_hash(small_set, tmp_path, monkeypatch):
    """Offline (a proxy nobody listens on: the real download fails at once), train, sweep and inspect
    stop on the missing weights before a run folder, a sweep folder or an inspect folder exists, with
    one line naming the file, and Keras's "Downloading data from" never reaches stdout."""
    import urllib.request

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    # urllib keeps the opener (with the proxy it read) for the process: put back the one from before
    monkeypatch.setattr(urllib.request, "_opener", None)
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.setenv("SCENECLS_HOME", str(tmp_path / "home"))
    project = tmp_path / "runs"
    common = ["--data", str(small_set), "--weights", "imagenet", "--image-size", "96",
              "--project", str(project), "--format", "json"]  # fmt: skip
    train = ["train", "--backbone", "mobilenet_v2"]
    sweep = ["sweep", "--backbones", "mobilenet_v2", "--unfreeze", "1", "--dense", "0"]
    for command in (train, sweep):
        result = CliRunner().invoke(cli, [*command, *common])
        assert result.exit_code == 1, result.output
        line = one_error_line(result)
        assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5" in line
        assert "Run folder" not in result.stderr and "Sweep folder" not in result.stderr
        assert result.stdout == ""
        assert not project.exists()
    output = tmp_path / "looked"
    result = CliRunner().invoke(
        cli, ["inspect", str(small_set), "--backbone", "mobilenet_v2", "--output", str(output)]
    )
    assert result.exit_code == 1, result.output
    assert "_96_no_top.h5" not in one_error_line(result) and "no_top.h5" in one_error_line(result)
    assert not output.exists() and not (tmp_path / "home").exists()


@pytest.mark.slow
def test_fail_under_gate_exits_5_after_writing_outputs(small_set, tmp_path):
    project = tmp_path / "runs"
    args = ["--data", str(small_set), *TINY, "--epochs", "1", "--finetune-epochs", "0",
            "--project", str(project), "--format", "json"]  # fmt: skip
    low = train_cli(*args, "--fail-under", "1.0")
    assert low.exit_code == 5
    assert "below --fail-under 1" in low.stderr
    summary = json.loads(low.stdout)  # the results were printed ...
    assert (Path(summary["run_dir"]) / "metrics.json").is_file()  # ... and saved
    assert train_cli(*args, "--fail-under", "0").exit_code == 0
