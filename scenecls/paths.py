"""Where scenecls keeps its files when the user does not say."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_DATASET = "intel"


def data_home() -> Path:
    """The per-user folder for data sets and caches.

    ``SCENECLS_HOME`` wins; otherwise the platform's usual place for per-user application data.
    """
    env = os.environ.get("SCENECLS_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "scenecls"


def default_dataset_dir() -> Path:
    """Where ``fetch-data`` puts the Intel data set and where ``train`` looks for it."""
    return data_home() / "datasets" / DEFAULT_DATASET


def data_source(data: str | os.PathLike | None) -> Path:
    """The data set to use: ``data`` when given, else the one ``fetch-data`` placed."""
    if data:
        if not Path(data).exists():
            from scenecls.errors import DataError

            raise DataError(f"no data set at {data}: the path does not exist")
        return Path(data)
    default = default_dataset_dir()
    if not default.exists():
        from scenecls.errors import DataError

        raise DataError(f"no data set at {default}: run `scenecls fetch-data` first, or pass --data PATH")
    return default


def cache_dir() -> Path:
    """Caches that can always be rebuilt (image scan results, backbone features and activations)."""
    return data_home() / "cache"
