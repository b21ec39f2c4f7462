"""The training engine: one fit per phase with callbacks, TensorBoard logs, extending a finished run,
and resume giving the same epochs as an uninterrupted run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from scenecls import runs
from tests.conftest import ctrl_c_at_batch, invoke, tiny, write_train_test

pytestmark = pytest.mark.slow  # trains several models: left out of the fast lane (-m "not slow")

TINY = tiny()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engine-data")
    return write_train_test(root, 12, 4)


def events(folder: Path) -> dict[str, list[tuple[int, object]]]:
    """Every summary in the event files under ``folder``: tag -> [(step, value or image bytes)]."""
    import tensorflow as tf

    found: dict[str, list] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                found.setdefault(value.tag, []).append((event.step, tensor))
    return found


def test_tensorboard_logs_every_epoch_per_phase_and_the_confusion_matrix(data, tmp_path):
    project = tmp_path / "runs"
    result = invoke(
        "train", "--data", str(data), *TINY, "--epochs", "2", "--finetune-epochs", "1", "--unfreeze", "1",
        "--tensorboard", "--project", str(project), "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    logs = project / "train" / "tensorboard"
    history = runs.read_history(project / "train" / "history.csv")
    head_train = events(logs / "head" / "train")
    assert [step for step, _ in head_train["epoch_loss"]] == [1, 2]
    assert float(head_train["epoch_loss"][0][1]) == pytest.approx(history[0]["loss"], rel=1e-5)
    logged_rates = [float(rate) for _, rate in head_train["epoch_learning_rate"]]
    assert logged_rates == pytest.approx([r["lr"] for r in history[:2]], rel=1e-5) and logged_rates[0] > 0
    finetune_val = events(logs / "finetune" / "validation")
    assert [step for step, _ in finetune_val["epoch_accuracy"]] == [3]
    assert float(finetune_val["epoch_accuracy"][0][1]) == pytest.approx(history[2]["val_accuracy"], rel=1e-5)
    image = events(logs / "evaluation")["confusion_matrix"]
    assert image[0][0] == 3 and bytes(image[0][1][2]).startswith(b"\x89PNG")


def test_a_finished_run_is_extended_with_more_epochs_of_its_last_phase(data, tmp_path):
    project = tmp_path / "runs"
    first = invoke(
        "train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "1", "--unfreeze", "1",
        "--project", str(project),
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    run = project / "train"
    optimizer_steps = _iterations(run / "last.keras")

    refused = invoke("train", "--resume", str(run), "--finetune-epochs", "1")
    assert refused.exit_code == 2 and "already has 1 epochs" in refused.stderr
    wrong = invoke("train", "--resume", str(run), "--epochs", "5")
    assert wrong.exit_code == 2 and "extend it with --finetune-epochs" in wrong.stderr

    more = invoke("train", "--resume", str(run), "--finetune-epochs", "3", "--format", "json")
    assert more.exit_code == 0, more.output
    history = runs.read_history(run / "history.csv")
    assert [(r["epoch"], r["phase"]) for r in history] == [
        (1, "head"), (2, "finetune"), (3, "finetune"), (4, "finetune"),
    ]  # fmt: skip
    assert json.loads(more.stdout)["epochs"] == 4
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 4
    assert json.loads((run / "config.json").read_text())["last_phase_epochs"] == 3
    assert _iterations(run / "last.keras") > optimizer_steps  # the optimizer went on, not afresh
    again = invoke("train", "--resume", str(run))
    assert again.exit_code == 0 and "already finished" in again.stderr


def _iterations(path: Path) -> int:
    from scenecls.classifier import load_model

    return int(load_model(path, compile=True).optimizer.iterations)


def test_a_head_only_run_is_extended_with_epochs(data, tmp_path):
    project = tmp_path / "runs"
    args = ["--data", str(data), *TINY, "--epochs", "1", "--unfreeze", "0", "--project", str(project)]
    assert invoke("train", *args).exit_code == 0
    more = invoke("train", "--resume", str(project / "train"), "--epochs", "2")
    assert more.exit_code == 0, more.output
    history = runs.read_history(project / "train" / "history.csv")
    assert [(r["epoch"], r["phase"]) for r in history] == [(1, "head"), (2, "head")]


def test_an_extended_cosine_phase_goes_on_along_the_longer_curve(data, tmp_path):
    project = tmp_path / "runs"
    args = ["--data", str(data), *TINY, "--epochs", "2", "--unfreeze", "0", "--lr-schedule", "cosine",
            "--lr", "1e-3", "--project", str(project)]  # fmt: skip
    assert invoke("train", *args).exit_code == 0
    run = project / "train"
    assert runs.read_history(run / "history.csv")[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # decayed
    more = invoke("train", "--resume", str(run), "--epochs", "4")
    assert more.exit_code == 0, more.output
    rates = [r["lr"] for r in runs.read_history(run / "history.csv")]
    # Epoch 3 ends three quarters along the 4-epoch curve, 1e-3 * (1 + cos(3 pi / 4)) / 2 = 1.5e-4: not
    # the 2-epoch curve's 0, nor a restart. (Keras counts a step more per epoch than the batches on
    # these datasets, which moves the curve by a step an epoch; hence the range.)
    assert 0.0 < rates[2] < 1e-3 * (1 + math.cos(math.pi / 2)) / 2
    assert rates[3] == pytest.approx(0.0, abs=1e-12)


def test_resume_in_the_cached_phase_repeats_the_uninterrupted_epochs(data, tmp_path, monkeypatch):
    """Each cached epoch has its own seeded order, so epochs after --resume are the ones an
    uninterrupted run trains (no dropout: nothing else is random)."""
    args = [*TINY, "--data", str(data), "--dropout", "0", "--epochs", "3", "--finetune-epochs", "0"]
    straight = invoke("train", *args, "--project", str(tmp_path / "a"))
    assert straight.exit_code == 0, straight.output

    with ctrl_c_at_batch(monkeypatch, 6):  # 4 batches an epoch: batch 2 of epoch 2
        assert invoke("train", *args, "--project", str(tmp_path / "b")).exit_code == 130
    assert invoke("train", "--resume", str(tmp_path / "b" / "train")).exit_code == 0

    a = runs.read_history(tmp_path / "a" / "train" / "history.csv")
    b = runs.read_history(tmp_path / "b" / "train" / "history.csv")
    for key in ("loss", "val_loss", "val_accuracy"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-4, abs=1e-6), key


def test_resume_drops_a_history_row_whose_checkpoint_never_finished(data, tmp_path):
    """Killed after history.csv got epoch 2's row but before state.json did: the resumed run trains
    epoch 2 again and the history holds it once."""
    project = tmp_path / "runs"
    done = invoke("train", "--data", str(data), *TINY, "--epochs", "2", "--finetune-epochs", "0",
                  "--project", str(project), "--name", "cut")  # fmt: skip
    assert done.exit_code == 0, done.output
    run = project / "cut"
    state = json.loads((run / "state.json").read_text())
    state.update(status="interrupted", epoch=1, phase_epoch=1)
    (run / "state.json").write_text(json.dumps(state))
    resumed = invoke("train", "--resume", str(run))
    assert resumed.exit_code == 0, resumed.output
    assert [row["epoch"] for row in runs.read_history(run / "history.csv")] == [1, 2]
