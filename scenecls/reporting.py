"""How the library tells its caller about progress without printing anything itself.

Library functions take a :class:`Reporter`; the CLI passes one that draws rich progress bars on stderr,
tests and other callers pass nothing and get :class:`NullReporter`.
"""

from __future__ import annotations

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

    def close(self) -> None: ...


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

    def close(self) -> None:
        pass


class NullReporter:
    """Reports nothing: the default for library callers that do not care."""

    def log(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def task(self, description: str, total: float | None = None, unit: str = "it") -> Task:
        return _NullTask()
