"""Errors the tool anticipates.

Every failure a user can cause or fix (a bad path, an unreachable server, a corrupt file) is raised as a
:class:`SceneclsError`; the CLI turns it into one line on stderr and the error's ``exit_code``. Anything
else is a bug and keeps its traceback behind ``--debug``.
"""

from __future__ import annotations

import os
import re


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


_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]+@")
# Secrets the tool or its libraries read from the environment: never printed, whatever message quotes them.
SECRET_VARIABLES = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "KAGGLE_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "DATABRICKS_TOKEN",
)


def redact(text: str) -> str:
    """``text`` with every credential a message may carry hidden: the user and password of an address
    (``https://alice:pw@host`` -> ``https://***@host``) and the value of any secret variable set in the
    environment. Every line the tool prints goes through it."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4 and value in text:
            text = text.replace(value, "***")
    return text


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
