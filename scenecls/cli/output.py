"""Everything the CLI shows: progress and logs on stderr, results on stdout.

Colour only when the stream is a terminal (rich decides, and honours ``NO_COLOR``); ``--quiet`` silences
stderr but never the results a command was asked for.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from scenecls.cli.types import FiniteFloatRange
from scenecls.progress import native_stderr_silenced
from scenecls.units import byte_size

FORMATS = ("table", "json", "csv")


def format_option(*choices: str, default: str = "table"):
    """The ``--format`` option for a command that prints results."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices or FORMATS),
        default=default,
        show_default=True,
        help="How to print results on stdout.",
    )


trust_model_option = click.option(
    "--trust-model",
    is_flag=True,
    help="Load a SavedModel even when its graph holds ops a classifier does not need (file, process or "
    "network ops): only for a model you trust.",
)


def precision_options(func):
    """``--mixed-precision`` and ``--jit``, for the commands that train or run a Keras model."""
    from scenecls.precision import JIT_MODES, PRECISIONS

    func = click.option(
        "--jit",
        type=click.Choice(JIT_MODES),
        default="auto",
        show_default=True,
        help="XLA compilation: auto = on GPUs only (slower on the CPUs measured).",
    )(func)
    return click.option(
        "--mixed-precision",
        type=click.Choice(PRECISIONS),
        default="auto",
        show_default=True,
        help="Compute in 16 bits: auto = float16 on GPUs with tensor cores, else off "
        "(slower on the CPUs measured).",
    )(func)


def exit_for_failed_inputs(out: Output, failed: int, total: int, done: str) -> None:
    """The exit code of a command over many inputs: 4 when every one failed (or there were none), 3
    when some did (said once on stderr), else none; ``done`` is what was not done to them."""
    if failed == total:
        out.warn(f"none of the {total} input(s) could be {done}")
        raise click.exceptions.Exit(4)
    if failed:
        out.warn(f"{failed} of {total} input(s) could not be {done}")
        raise click.exceptions.Exit(3)


EXIT_BELOW_THRESHOLD = 5  # finished, outputs written, but accuracy below --fail-under


def fail_under_option():
    """``--fail-under X``: an accuracy gate for scripts and CI jobs."""
    return click.option(
        "--fail-under",
        type=FiniteFloatRange(0, 1),
        default=None,
        metavar="ACC",
        help=f"Exit with code {EXIT_BELOW_THRESHOLD} (after writing every output) when the accuracy is "
        "below ACC, a fraction such as 0.93.",
    )


def check_fail_under(out: Output, accuracy: float | None, threshold: float | None, what: str) -> None:
    """Exit with :data:`EXIT_BELOW_THRESHOLD` when ``accuracy`` is below ``threshold`` (or unknown)."""
    if threshold is None:
        return
    if accuracy is None or not accuracy >= threshold:
        shown = "unknown" if accuracy is None else f"{accuracy:.4f}"
        click.echo(f"{what} {shown} is below --fail-under {threshold:g}", err=True)  # even with -q
        raise click.exceptions.Exit(EXIT_BELOW_THRESHOLD)


def accuracy_cell(value: float | None) -> str:
    """An accuracy as a table shows it; ``-`` when there is none (no test or validation images)."""
    return "-" if value is None else f"{value:.4f}"


def project_option():
    """``--project``: the folder that holds the run folders."""
    return click.option(
        "--project",
        type=click.Path(path_type=Path),
        default=Path("runs"),
        show_default=True,
        help="Folder that holds the run folders.",
    )


class Output:
    def __init__(self, quiet: bool = False, debug: bool = False) -> None:
        self.quiet = quiet
        self.debug = debug
        self.err = Console(stderr=True, quiet=quiet, highlight=False, soft_wrap=True)
        self.out = Console(highlight=False, soft_wrap=True)
        if not self.out.is_terminal:
            # Piped tables keep their rows whole instead of wrapping at 80 columns.
            self.out = Console(highlight=False, soft_wrap=True, width=200)

    def set_quiet(self) -> None:
        """``-q`` given after the subcommand: silence stderr from now on."""
        self.quiet = True
        self.err.quiet = True

    # ------------------------------------------------------------------------------ stderr
    def log(self, message: str) -> None:
        self.err.print(escape(printable(message)))

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]Warning:[/] {escape(printable(message))}")

    def reporter(self) -> RichReporter | PlainReporter:
        """Live progress bars on a terminal; plain, periodic lines in a log file (a batch job's stderr)."""
        return RichReporter(self) if self.err.is_terminal else PlainReporter(self)

    def load_tensorflow(self) -> None:
        """Import TensorFlow with its C++ start-up chatter (CUDA probing, oneDNN notices) silenced.

        That chatter is written straight to file descriptor 2 before any Python logging exists, so
        the descriptor itself is pointed at /dev/null while TensorFlow loads and probes devices.
        ``--debug`` keeps it.
        """
        if "tensorflow" in sys.modules:
            return
        with native_stderr_silenced(not self.debug):
            import tensorflow as tf

            tf.config.list_physical_devices()

    # ------------------------------------------------------------------------------ stdout
    def json(self, data: Any) -> None:
        """Standard JSON on stdout: non-finite numbers as null; non-UTF-8 file names as escapes."""
        click.echo(dumps(data, indent=2))

    def csv(self, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.csv_row(columns)
        for row in rows:
            self.csv_row(row)

    def csv_row(self, row: Sequence[Any]) -> None:
        """One CSV line on stdout at once (for results that stream); None is an empty cell."""
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(["" if v is None else v for v in row])
        click.echo(printable(buffer.getvalue()), nl=False)

    def table(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        title: str | None = None,
        numeric: Sequence[str] = (),
    ) -> None:
        table = Table(title=title, title_justify="left", header_style="bold")
        for column in columns:
            table.add_column(column, justify="right" if column in numeric else "left")
        for row in rows:
            table.add_row(*(Text(printable(_cell(v))) for v in row))
        self.out.print(table)


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a non-UTF-8 file name shown as U+FFFD, so that printing
    it cannot fail, and with any credential in it hidden (:func:`scenecls.errors.redact`)."""
    from scenecls.errors import redact

    return redact(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def dumps(data: Any, indent: int | None = None) -> str:
    """JSON for stdout: NaN and infinities become null (``NaN`` is not JSON), and the undecodable bytes
    of a non-UTF-8 file name become ``\\xNN`` escapes (a lone surrogate is not JSON either)."""
    from scenecls.runs import finite_or_none

    return json.dumps(_escaped(finite_or_none(data)), indent=indent, default=str, allow_nan=False)


def escape_undecodable(text: str) -> str:
    """``caf\\udce9.png`` (a Latin-1 byte read with ``surrogateescape``) -> ``caf\\\\xe9.png``: the file
    system's bytes as the text ``\\xe9``, which every JSON parser reads."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def _escaped(data: Any) -> Any:
    if isinstance(data, str):
        return escape_undecodable(data)
    if isinstance(data, dict):
        return {_escaped(key): _escaped(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_escaped(value) for value in data]
    return data


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# ------------------------------------------------------------------------------------- progress


class _AmountColumn(ProgressColumn):
    """``12.3 MiB/40.0 MiB 5.1 MiB/s`` for bytes, ``120/400 images`` otherwise."""

    def render(self, task) -> Text:
        unit = task.fields.get("unit", "it")
        if unit == "B":
            total = byte_size(task.total) if task.total else "?"
            speed = f" {byte_size(task.speed)}/s" if task.speed else ""
            return Text(f"{byte_size(task.completed)}/{total}{speed}")
        total = f"{int(task.total)}" if task.total is not None else "?"
        return Text(f"{int(task.completed)}/{total} {unit}")


class _RichTask:
    def __init__(self, reporter: RichReporter, task_id) -> None:
        self._reporter = reporter
        self._id = task_id
        self._closed = False

    def advance(self, amount: float = 1) -> None:
        self._reporter.progress.advance(self._id, amount)

    def update(self, *, completed=None, total=None, description=None, info=None) -> None:
        fields: dict[str, Any] = {}
        if info is not None:
            fields["info"] = info
        self._reporter.progress.update(
            self._id, completed=completed, total=total, description=description, **fields
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._reporter.release()


class RichReporter:
    """A :class:`scenecls.progress.Reporter` drawing one shared rich progress display."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            _AmountColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=output.err,
            disable=output.quiet,
        )
        self._open = 0

    def log(self, message: str) -> None:
        self.output.log(message)

    def warn(self, message: str) -> None:
        self.output.warn(message)

    def task(self, description: str, total: float | None = None, unit: str = "it") -> _RichTask:
        if self._open == 0:
            self.progress.start()
        self._open += 1
        task_id = self.progress.add_task(description, total=total, unit=unit, info="")
        return _RichTask(self, task_id)

    def release(self) -> None:
        self._open -= 1
        if self._open == 0:
            self.progress.stop()  # leaves the finished bars on screen as a record
            for task_id in list(self.progress.task_ids):
                self.progress.remove_task(task_id)


# --------------------------------------------------------------------------------- plain progress

PROGRESS_SECONDS = "SCENECLS_PROGRESS_SECONDS"  # how often a log gets a progress line (default 30)


class PlainReporter:
    """Progress for a stderr that is a file, such as a Slurm job's log: a line every ``interval``
    seconds while a task runs (count, per cent, rate, time left) and one when it ends.
    No carriage returns or cursor moves, so the log reads top to bottom."""

    def __init__(self, output: Output, interval: float | None = None) -> None:
        self.output = output
        if interval is None:
            try:
                interval = float(os.environ.get(PROGRESS_SECONDS, "30"))
            except ValueError:
                interval = 30.0
        self.interval = max(0.0, interval)

    def log(self, message: str) -> None:
        self.output.log(message)

    def warn(self, message: str) -> None:
        self.output.warn(message)

    def task(self, description: str, total: float | None = None, unit: str = "it") -> _PlainTask:
        return _PlainTask(self, description, total, unit)


class _PlainTask:
    def __init__(self, reporter: PlainReporter, description: str, total: float | None, unit: str) -> None:
        self._reporter = reporter
        self.description, self.total, self.unit = description, total, unit
        self.completed = 0.0
        self.info = ""
        self._start = self._last = time.monotonic()
        self._closed = False

    def advance(self, amount: float = 1) -> None:
        self.completed += amount
        self._maybe_print()

    def update(self, *, completed=None, total=None, description=None, info=None) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        if info is not None:
            self.info = info
        self._maybe_print()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        elapsed = time.monotonic() - self._start
        # Closed while an error or Ctrl-C is on its way up (a ``finally``): the task did not finish.
        ended = "stopped after" if sys.exc_info()[0] is not None else "done,"
        self._reporter.log(
            f"{self.description}: {ended} {self._amount(self.completed)} in {_duration(elapsed)}"
        )

    def _maybe_print(self) -> None:
        now = time.monotonic()
        finished = bool(self.total) and self.completed >= self.total  # close() says so
        if now - self._last < self._reporter.interval or self._closed or finished:
            return
        self._last = now
        elapsed = now - self._start
        rate = self.completed / elapsed if elapsed > 0 else 0.0
        parts = [self._amount(self.completed, self.total)]
        if self.total:
            parts[0] += f" ({self.completed / self.total:.0%})"
        if rate > 0:
            parts.append(f"{self._amount(rate)}/s")
            if self.total:
                parts.append(f"eta {_duration((self.total - self.completed) / rate)}")
        if self.info:
            parts.append(self.info)
        self._reporter.log(f"{self.description}: " + ", ".join(parts))

    def _amount(self, value: float, total: float | None = None) -> str:
        if self.unit == "B":
            return byte_size(value) + (f"/{byte_size(total)}" if total else "")
        shown = f"{value:.1f}" if value and value < 10 and value != int(value) else f"{int(value)}"
        return shown + (f"/{int(total)}" if total else "") + f" {self.unit}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
