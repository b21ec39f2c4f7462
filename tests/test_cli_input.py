"""What the command line takes: every number finite and in range at parse time (exit 2, nothing made),
an empty --shard refused, a --url that parsers read differently refused at once, and messages a user can
act on (a read-only SCENECLS_HOME, a task that stopped, a train before fetch-data)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from scenecls.cli import _os_error_message, cli
from tests.conftest import RecordingReporter, invoke, one_error_line, write_class_folders


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--lr", "1e39"],
        ["train", "--lr", "inf"],
        ["train", "--lr", "nan"],
        ["train", "--finetune-lr", "nan"],
        ["train", "--mixup", "inf"],
        ["train", "--dropout", "nan"],
        ["finetune", "--finetune-lr", "-inf"],
        ["lr-find", "--end-lr", "nan"],
        ["cache", "--clear", "--older-than", "nan"],
        ["sweep", "--lr", "inf", "--dry-run"],
    ],
)
def test_numbers_that_are_not_finite_or_out_of_range_are_usage_errors(tmp_path, args):
    project = tmp_path / "runs"
    result = invoke(*args, *(["--project", str(project)] if args[0] != "cache" else []))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "unexpected" not in result.output
    assert not project.exists()


def test_an_empty_shard_is_a_usage_error_not_the_whole_grid(tmp_path):
    """An unset variable in a job array (--shard "$I/$N" with both empty, or --shard "") must not run
    the whole grid in every job."""
    result = invoke("sweep", "--shard", "", "--dry-run", "--project", str(tmp_path / "runs"))
    assert result.exit_code == 2 and "--shard takes I/N" in result.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://host\\@kaggle.com/x.zip", "a backslash or space in the host part"),
        ("https://example.org:8o/x.zip", "has a port that is not a number"),
    ],
)
def test_a_url_parsers_read_differently_is_refused_at_once(tmp_path, url, message):
    started = time.monotonic()
    result = invoke("fetch-data", "--url", url, "--dest", str(tmp_path / "d"))
    assert result.exit_code == 2 and message in result.stderr
    assert time.monotonic() - started < 5  # no retries
    assert not (tmp_path / "d").exists()


def test_train_before_fetch_data_leaves_no_runs_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SCENECLS_HOME", str(tmp_path / "home"))
    project = tmp_path / "runs"
    result = invoke("train", "--project", str(project))
    assert result.exit_code == 1 and "run `scenecls fetch-data` first" in result.stderr
    assert not project.exists()
    missing = invoke("train", "--data", str(tmp_path / "nowhere"), "--project", str(project))
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    assert not project.exists()


def test_a_read_only_scenecls_home_names_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("SCENECLS_HOME", str(tmp_path / "home"))
    inside = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "home" / "cache" / "x"))
    message = _os_error_message(inside)
    assert "SCENECLS_HOME" in message and "--no-cache" in message
    elsewhere = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "runs"))
    assert "SCENECLS_HOME" not in _os_error_message(elsewhere)


def test_a_task_closed_by_an_error_says_stopped_not_done():
    from scenecls.cli.output import Output
    from scenecls.cli.progress import PlainReporter

    lines = []
    reporter = PlainReporter(Output(), interval=3600)
    reporter.log = lines.append
    task = reporter.task("Downloading", unit="B")
    with pytest.raises(KeyboardInterrupt):
        try:
            raise KeyboardInterrupt
        finally:
            task.close()
    finished = reporter.task("Extracting", total=2, unit="files")
    finished.advance(2)
    finished.close()
    assert lines[0].startswith("Downloading: stopped after 0 B in")
    assert lines[1].startswith("Extracting: done, 2/2 files in") or lines[1].startswith(
        "Extracting: done, 2 files in"
    )


def test_a_csv_class_whose_files_are_all_missing_is_left_out(tmp_path):
    from scenecls.data.pipeline import prepare_data

    source = write_class_folders(tmp_path / "src", 4, size=16, classes=("alpha", "beta"))
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    rows = []
    for name in ("alpha", "beta"):
        for image in sorted((source / name).iterdir()):
            image.rename(root / "images" / f"{name}-{image.name}")
            rows.append(f"{name}-{image.name},{name}")
    rows += [f"gone-{i}.jpg,gamma" for i in range(3)]
    (root / "train.csv").write_text("image_name,label\n" + "\n".join(rows) + "\n")
    reporter = RecordingReporter()

    prepared = prepare_data(root / "train.csv", val_split=0.25, seed=0, reporter=reporter)
    assert prepared.classes == ["alpha", "beta"]
    assert any("class 'gamma'" in w and "left out" in w for w in reporter.warnings)
    assert len(prepared.train) + len(prepared.val) == 8
    assert Path(root / "train.csv").is_file()


# ------------------------------------------------------------------------------------- scripts


def test_closed_output_pipe_exits_quietly(tmp_path, intel_zip):
    """``scenecls ... --format csv | head`` must not print a BrokenPipeError."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first row is written
    try:
        args = ["fetch-data", "--from", str(intel_zip), "--dest", str(tmp_path / "d"), "--format", "csv"]
        done = subprocess.run(
            [sys.executable, "-m", "scenecls", "-q", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""


def test_quiet_is_accepted_after_the_subcommand(tmp_path, intel_zip):
    result = CliRunner().invoke(
        cli, ["fetch-data", "--from", str(intel_zip), "--dest", str(tmp_path / "d"), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "alpha" in result.stdout  # the results still print
    loud = CliRunner().invoke(cli, ["fetch-data", "--from", str(intel_zip), "--dest", str(tmp_path / "d")])
    assert "already holds" in loud.stderr


# ------------------------------------------------------------------------------ small ones


def test_long_errors_are_cut_at_a_boundary():
    from scenecls.errors import first_line

    message = "the weights do not fit; " + " ".join(f"layer_{i} expected shape (3, 3, 32)" for i in range(40))
    cut = first_line(ValueError(message), 120)
    assert len(cut) <= 122 and cut.endswith(" …")
    assert cut[:-2] == message[: len(cut) - 2]  # a prefix of the message ...
    assert message[len(cut) - 2] in " ;,."  # ... ending where a word ends


def test_an_error_line_that_introduces_a_list_is_cut_before_the_list():
    from scenecls.errors import first_line

    keras_style = "A total of 3 objects could not be loaded. Example error message for object <C>:\n\nshape"
    assert first_line(ValueError(keras_style)) == "A total of 3 objects could not be loaded."
    assert first_line(ValueError("Cannot read these:\na.jpg\nb.jpg")) == "Cannot read these"
    assert first_line(ValueError("ratio 1:2")) == "ratio 1:2"
    assert first_line(ValueError("no colon")) == "no colon"


def test_finetune_offers_only_the_fine_tuning_cache_options():
    """finetune has no phase 1, so no feature-cache copies; its fine-tuning uses the activation cache."""
    result = CliRunner().invoke(cli, ["finetune", "--help"])
    assert result.exit_code == 0
    assert "--cache-aug" not in result.output
    assert "--no-cache" in result.output and "--finetune-copies" in result.output
    assert "--cache-aug" in CliRunner().invoke(cli, ["train", "--help"]).output


def test_sweep_grid_values_run_once_and_negative_dense_is_usage():
    from scenecls.training.sweep import grid

    points = grid(["mobilenet_v2", "mobilenet_v2"], ["1", "1", "3"], [1, 1, 2])
    assert [p.name for p in points] == [
        "mobilenet_v2-d1-u1",
        "mobilenet_v2-d2-u1",
        "mobilenet_v2-d1-u3",
        "mobilenet_v2-d2-u3",
    ]
    result = CliRunner().invoke(cli, ["sweep", "--dense", "-1", "--dry-run"])
    assert result.exit_code == 2
    assert "--dense" in one_error_line(result)


def test_quiet_sweep_still_prints_its_table_with_readable_headers():
    from scenecls.cli.sweep import _cell

    args = ["-q", "sweep", "--backbones", "mobilenet_v2", "--unfreeze", "1", "--dense", "1,1",
            "--image-size", "32", "--weights", "none", "--dry-run"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "unfrozen blocks" in result.stdout and "unfrozen_blocks" not in result.stdout
    assert result.stdout.count("mobilenet_v2-d1-u1") == 1
    assert _cell("seconds", 12.3456) == "12 s"
