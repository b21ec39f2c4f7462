"""Sizes and counts as people read them, one way everywhere the tool prints one."""

from __future__ import annotations

_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def byte_size(count: float) -> str:
    """``1.5 GiB``, ``12.0 MiB``, ``800 B``: binary units, one decimal, the largest unit that is ≥ 1."""
    for unit, scale in _UNITS:
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


def count(number: int, noun: str, plural: str | None = None) -> str:
    """``1 image``, ``2 images``, ``0 images``: a number with its noun agreeing (``plural`` when adding
    an s is not the English plural)."""
    return f"{number:,} {noun if number == 1 else plural or noun + 's'}"
