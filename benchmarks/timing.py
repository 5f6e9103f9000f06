"""Timing helper shared by the benchmark scripts (medians: this machine is shared and noisy)."""

import statistics
import time


def median_time(fn, repeats: int) -> float:
    """Median wall time (s) of `repeats` calls of `fn`."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
