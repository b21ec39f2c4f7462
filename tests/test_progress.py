"""Progress where stderr is a log file (a batch job): plain lines, no carriage returns, with rate and
time left, at most every SCENECLS_PROGRESS_SECONDS."""

from __future__ import annotations

import re

from click.testing import CliRunner

from scenecls.cli import cli
from scenecls.cli.output import Output
from scenecls.cli.progress import PlainReporter, RichReporter
from tests.conftest import intel_like_zip


class Lines:
    """An Output stand-in that records what would be logged."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append("Warning: " + message)


def test_plain_progress_lines_say_count_rate_and_time_left(monkeypatch):
    clock = {"now": 100.0}
    monkeypatch.setattr("scenecls.cli.progress.time.monotonic", lambda: clock["now"])
    sink = Lines()
    task = PlainReporter(sink, interval=10).task("Epoch 1/5 head", total=200, unit="batches")
    for _ in range(200):
        clock["now"] += 0.25  # 4 batches a second
        task.advance()
        task.update(info="loss 0.512 acc 0.810")
    task.close()
    assert len(sink.lines) == 5  # every 10 s of 50, then the end
    assert sink.lines[0] == "Epoch 1/5 head: 40/200 batches (20%), 4 batches/s, eta 40s, loss 0.512 acc 0.810"
    assert sink.lines[-1] == "Epoch 1/5 head: done, 200 batches in 50s"
    assert not any("\r" in line for line in sink.lines)


def test_one_of_a_unit_is_said_in_the_singular():
    sink = Lines()
    reporter = PlainReporter(sink, interval=1000)
    for unit, one in (("batches", "1 batch"), ("images", "1 image"), ("boxes", "1 box")):
        task = reporter.task("Caching features", total=1, unit=unit)
        task.advance()
        task.close()
        assert sink.lines[-1].startswith(f"Caching features: done, {one} in"), sink.lines[-1]


def test_a_task_its_caller_summarises_ends_without_a_line_of_its_own_unless_stopped():
    sink = Lines()
    reporter = PlainReporter(sink, interval=1000)
    epoch = reporter.task("Epoch 1/5 head", total=10, unit="batches")
    epoch.update(completed=10)
    epoch.close(summarised=True)  # the epoch's own line (loss, accuracy) follows
    assert sink.lines == []
    stopped = reporter.task("Epoch 2/5 head", total=10, unit="batches")
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        stopped.close(summarised=True)
    assert sink.lines == ["Epoch 2/5 head: stopped after 0 batches in 0s"]


def test_plain_progress_of_a_download_in_bytes(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr("scenecls.cli.progress.time.monotonic", lambda: clock["now"])
    sink = Lines()
    task = PlainReporter(sink, interval=60).task("Downloading", unit="B")
    task.update(total=300_000_000)
    clock["now"] = 61.0
    task.update(completed=100_000_000)
    assert re.fullmatch(r"Downloading: 95\.4 MiB/286\.1 MiB \(33%\), 1\.6 MiB/s, eta 2m02s", sink.lines[0])


def test_a_log_file_gets_plain_lines_and_a_terminal_gets_bars(tmp_path, monkeypatch):
    assert isinstance(Output().reporter(), PlainReporter)  # pytest's stderr is not a terminal
    monkeypatch.setenv("SCENECLS_PROGRESS_SECONDS", "0")
    archive = tmp_path / "intel.zip"
    archive.write_bytes(intel_like_zip(tmp_path))
    result = CliRunner().invoke(cli, ["fetch-data", "--from", str(archive), "--dest", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    extracting = [line for line in result.stderr.splitlines() if line.startswith("Extracting")]
    assert extracting[-1].startswith("Extracting: done, ") and len(extracting) > 2
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr
    forced = Output()
    forced.err._force_terminal = True
    assert isinstance(forced.reporter(), RichReporter)


def test_the_first_batch_is_timed_once_even_where_there_is_no_proc(monkeypatch, tmp_path):
    """Where /proc is missing (macOS) the figure is None: it is read at the first batch only, not tried
    again on every batch after it."""
    from scenecls.progress import NullReporter
    from scenecls.training import callbacks

    reads = []
    monkeypatch.setattr(callbacks, "process_seconds", lambda: reads.append(1))
    ledger = callbacks.Ledger(state=None, history=[], run_dir=tmp_path, started=0.0)
    progress = callbacks.BatchProgress(NullReporter(), ledger, callbacks.PhaseInfo(0, "head", 1e-3, 0), 5, 1)
    for batch in range(5):
        progress.on_train_batch_begin(batch)
    assert len(reads) == 1 and ledger.batches_begun and ledger.first_batch is None
