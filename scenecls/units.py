"""Byte counts as people read them, one way everywhere the tool prints a size."""

from __future__ import annotations

_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def byte_size(count: float) -> str:
    """``1.5 GiB``, ``12.0 MiB``, ``800 B``: binary units, one decimal, the largest unit that is ≥ 1."""
    for unit, scale in _UNITS:
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"
