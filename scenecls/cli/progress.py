"""The CLI's :class:`scenecls.progress.Reporter`: live rich progress bars on a terminal, plain periodic
lines in a log (a batch job's stderr). Both print through an :class:`~scenecls.cli.output.Output`."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from scenecls.units import byte_size


class Output(Protocol):
    """What the reporters print through (:class:`scenecls.cli.output.Output` is one): its stderr
    console, whether it is quiet, and its one-line log and warning."""

    err: Console
    quiet: bool

    def log(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...


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

    def close(self, *, summarised: bool = False) -> None:
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

    def close(self, *, summarised: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        elapsed = time.monotonic() - self._start
        # Closed while an error or Ctrl-C is on its way up (a ``finally``): the task did not finish.
        stopped = sys.exc_info()[0] is not None
        if summarised and not stopped:  # the caller's own line says it: one line, not two
            return
        ended = "stopped after" if stopped else "done,"
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
        one = value == 1 and not total and self.unit.endswith("s")  # "1 image", not "1 images"
        return shown + (f"/{int(total)}" if total else "") + f" {_singular(self.unit) if one else self.unit}"


def _singular(unit: str) -> str:
    """``images`` -> ``image``, ``batches`` -> ``batch``."""
    return unit[:-2] if unit.endswith(("ches", "shes", "sses", "xes")) else unit[:-1]


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
