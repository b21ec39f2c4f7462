"""A package's front door whose names load on first use, so that importing the package (as the CLI
does for ``--help``) imports none of its modules, nor NumPy or TensorFlow behind them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def front_door(package: str, names: dict[str, str], renamed: dict[str, str] | None = None) -> Callable:
    """The ``__getattr__`` of ``package``: each of ``names`` (name -> the module that defines it, under
    the name ``renamed`` gives, else the same) imported when first asked for, then kept in the package."""
    renamed = renamed or {}

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), renamed.get(name, name))
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
