"""Timing helper for the benchmark scripts: ratios measured in one run, robust to noise."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def median_seconds(fn: Callable[[], object], repeats: int = 20, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over several calls.

    Args:
        fn: the work to time.
        repeats: timed calls.
        warmup: untimed calls first (caches, allocator).

    Returns:
        Median seconds per call.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
