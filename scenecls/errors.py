"""Errors the tool anticipates.

Every failure a user can cause or fix (a bad path, an unreachable server, a corrupt file) is raised as a
:class:`SceneclsError`; the CLI turns it into one line on stderr and the error's ``exit_code``. Anything
else is a bug and keeps its traceback behind ``--debug``.
"""

from __future__ import annotations


class SceneclsError(Exception):
    """An anticipated failure with a message fit to show a user as it is."""

    exit_code = 1


class UsageError(SceneclsError):
    """Options that cannot work together, found after click's own parsing."""

    exit_code = 2


class DataError(SceneclsError):
    """A data set, folder, image or archive that cannot be used."""


class DownloadError(SceneclsError):
    """A download that failed for a reason the user can act on."""


class ModelError(SceneclsError):
    """A model, checkpoint or weights file that cannot be built or loaded."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message, or its type's name; a last clause that only
    introduces the lines after it (ends in a colon) is left out.

    With ``limit``, a longer line is cut at the last sentence or clause end (else word) before it and
    marked with an ellipsis, never in the middle of a word.
    """
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    if line.endswith(":") and "\n" in text:  # "... Example error message for object X:" + what follows
        line = line[: line.rfind(". ") + 1] if ". " in line else line.rstrip(":")
    if not limit or len(line) <= limit:
        return line
    head = line[:limit]
    for mark in (". ", "; ", ": ", ", ", " "):
        cut = head.rfind(mark)
        if cut > limit // 2:
            return head[:cut].rstrip(" .;:,") + " …"
    return head + "…"
