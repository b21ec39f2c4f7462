"""How the library tells its caller about progress without printing anything itself.

Library functions take a :class:`Reporter`; the CLI passes one that draws rich progress bars on stderr,
tests and other callers pass nothing and get :class:`NullReporter`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Protocol


class Task(Protocol):
    """One unit of work with an optional known size (bytes, files, batches)."""

    def advance(self, amount: float = 1) -> None: ...

    def update(
        self,
        *,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        info: str | None = None,
    ) -> None: ...

    def close(self, *, summarised: bool = False) -> None:
        """End the task; ``summarised``: the caller logs a line of its own about it next (an epoch's
        results), so a log gets no second line saying it is done."""


class Reporter(Protocol):
    def log(self, message: str) -> None:
        """A line of information for a person (the CLI shows it on stderr unless quiet)."""

    def warn(self, message: str) -> None:
        """Something went wrong but the work goes on."""

    def task(self, description: str, total: float | None = None, unit: str = "it") -> Task:
        """Start a task; ``unit="B"`` marks byte counts."""


class _NullTask:
    def advance(self, amount: float = 1) -> None:
        pass

    def update(self, **_: object) -> None:
        pass

    def close(self, *, summarised: bool = False) -> None:
        pass


class NullReporter:
    """Reports nothing: the default for library callers that do not care."""

    def log(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def task(self, description: str, total: float | None = None, unit: str = "it") -> Task:
        return _NullTask()


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True) -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while native code (TensorFlow's start-up, LiteRT's delegate)
    announces itself: those lines bypass Python, so only the descriptor can hold them back. With
    ``enabled`` false, or ``SCENECLS_DEBUG`` set (``--debug``), nothing is hidden."""
    if not enabled or os.environ.get("SCENECLS_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
