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


EXIT_BELOW_THRESHOLD = 5  # finished, outputs written, but accuracy below --fail-under


def fail_under_option():
    """``--fail-under X``: an accuracy gate for scripts and CI jobs."""
    return click.option(
        "--fail-under",
        type=click.FloatRange(0, 1),
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

    def reporter(self) -> RichReporter:
        return RichReporter(self)

    def load_tensorflow(self) -> None:
        """Import TensorFlow with its C++ start-up chatter (CUDA probing, oneDNN notices) silenced.

        That chatter is written straight to file descriptor 2 before any Python logging exists, so
        the descriptor itself is pointed at /dev/null while TensorFlow loads and probes devices.
        ``--debug`` keeps it.
        """
        if self.debug or "tensorflow" in sys.modules:
            return
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                import tensorflow as tf

                tf.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)

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
    it cannot fail."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def dumps(data: Any, indent: int | None = None) -> str:
    """JSON for stdout: NaN and infinities become null (``NaN`` is not JSON)."""
    from scenecls.training.runs import finite_or_none

    return json.dumps(finite_or_none(data), indent=indent, default=str, allow_nan=False)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# ------------------------------------------------------------------------------------- progress


class _AmountColumn(ProgressColumn):
    """``12.3/40.0 MB 5.1 MB/s`` for bytes, ``120/400 images`` otherwise."""

    def render(self, task) -> Text:
        unit = task.fields.get("unit", "it")
        if unit == "B":
            from rich.filesize import decimal

            total = decimal(int(task.total)) if task.total else "?"
            speed = f" {decimal(int(task.speed))}/s" if task.speed else ""
            return Text(f"{decimal(int(task.completed))}/{total}{speed}")
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
    """A :class:`scenecls.reporting.Reporter` drawing one shared rich progress display."""

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
