"""Thread counts follow the cores this process may use (a cluster job's CPU set), not the machine's."""

from __future__ import annotations

import os

import pytest

from scenecls.cores import decode_threads, usable_cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_a_process_bound_to_one_core_decodes_with_two_threads():
    allowed = os.sched_getaffinity(0)
    assert usable_cores() == len(allowed)
    try:
        os.sched_setaffinity(0, {min(allowed)})  # as `taskset -c N` or a job's CPU set would
        assert usable_cores() == 1
        assert decode_threads() == 2 and decode_threads(extra=2) == 3
    finally:
        os.sched_setaffinity(0, allowed)
    assert decode_threads() == min(8, len(allowed) + 1)
