"""Everything the CLI shows: progress and logs on stderr, results on stdout.

Colour only when the stream is a terminal (rich decides, and honours ``NO_COLOR``); ``--quiet`` silences
stderr but never the results a command was asked for.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from scenecls.cli.progress import PlainReporter, RichReporter
from scenecls.progress import native_stderr_silenced
from scenecls.units import count


def exit_for_failed_inputs(out: Output, failed: int, total: int, done: str, partly: int = 0) -> None:
    """The exit code of a command over many inputs: 4 when every one failed (or there were none), 3
    when some did or some only in part (a video read up to its damage; said once on stderr), else none;
    ``done`` is what was not done to them."""
    if failed == total and not partly:
        out.warn(f"none of the {count(total, 'input')} could be {done}")
        raise click.exceptions.Exit(4)
    if failed or partly:
        said = [f"{failed} of {count(total, 'input')} could not be {done}"] if failed else []
        if partly:
            said.append(f"{partly} of {count(total, 'input')} could be {done} only up to a damaged part")
        out.warn("; ".join(said))
        raise click.exceptions.Exit(3)


EXIT_BELOW_THRESHOLD = 5  # finished, outputs written, but accuracy below --fail-under


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


class Output:
    def __init__(self, quiet: bool = False, debug: bool = False) -> None:
        self.started = time.monotonic()  # the command's own time, for summaries
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
        # A key/value table (every heading empty) shows no header row: an empty bold line says nothing.
        show_header = any(columns)
        table = Table(title=title, title_justify="left", header_style="bold", show_header=show_header)
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


def say_model(out: Output, model_path, run_dir, fmt: str) -> None:
    """Name on stderr the model a command uses (after ``ensemble``, "the latest run" is the ensemble):
    not with JSON output, where the result names it."""
    if fmt in ("json", "jsonl"):
        return
    what = ""
    if run_dir is not None:  # a run folder: resolve_model found its config.json
        from scenecls.runs import Run

        config = Run(run_dir).recorded
        members = (config.get("ensemble") or {}).get("members") or []
        if members:
            what = f", the ensemble of {len(members)} runs"
        elif config.get("backbone"):
            what = f", {config['backbone']}"
    out.log(f"Model: {model_path}{what}")
