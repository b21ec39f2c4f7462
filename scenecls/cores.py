"""How many cores this process may use, and how many threads decode images beside the model."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (a cluster's CPU set or ``taskset`` may allow fewer than the
    machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def decode_threads(extra: int = 1) -> int:
    """Threads that decode images: ``extra`` more than the usable cores (a thread waits on the disk now
    and then), at most 8. A job given 2 cores of a 64-core node gets 3, not 8."""
    return min(8, usable_cores() + extra)
