"""MLflow's messages as ours: one line, the reason that matters, and no credentials (a tracking URI
with a password in it is quoted in MLflow's retry warnings)."""

from __future__ import annotations

import logging
from pathlib import Path

from scenecls.errors import redact


def safe_uri(uri: str) -> str:
    """``uri`` without a user name or password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))
    return uri


class _Redacting(logging.Filter):
    """Hides credentials in the log lines MLflow and its HTTP stack print (a tracking URI with a
    password in it is quoted in their retry warnings)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.name.startswith(("mlflow", "alembic", "urllib3")):
            # MLflow logs a failed database call with its SQL, parameters and a traceback; the
            # failure reaches us too and is said in one line, so theirs is cut to its first line.
            cleaned = cleaned.strip().splitlines()[0] if cleaned.strip() else cleaned
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def redact_library_logs() -> None:
    """Put :class:`_Redacting` on every handler that prints MLflow's (and the root logger's) lines."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (creating tables...) are not ours
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # A failed database call is logged there with its SQL, and reaches us as an error we say ourselves.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    for name in ("mlflow", ""):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _Redacting) for f in handler.filters):
                handler.addFilter(_Redacting())


NAMED_STORES: set[str] = set()  # default stores already named in this process (a sweep opens many runs)


def where(uri: str) -> str:
    """A tracking URI for a message: credentials out, a relative SQLite or file store made absolute."""
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
            return f"{prefix}{Path(uri[len(prefix) :]).absolute()}"
    if "://" not in uri:
        return str(Path(uri).absolute())
    return safe_uri(uri)


def cause(exc: BaseException) -> BaseException:
    """The error that says what went wrong: a database driver's own (``attempt to write a readonly
    database``) rather than SQLAlchemy's wrapper around it, whose first line is about autoflush."""
    seen: BaseException | None = exc
    for _ in range(5):  # MLflow raises its own error from SQLAlchemy's, which wraps the driver's
        if seen is None:
            break
        original = getattr(seen, "orig", None)
        if isinstance(original, BaseException):
            return original
        seen = seen.__cause__
    return exc
