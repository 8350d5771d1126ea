"""Shared by the benchmarks: the median wall time of a call after a warm-up, and a Markdown table for README."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up: first-call costs (allocation, compilation, caches) are not per-call costs
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def print_markdown_table(header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table as benchmarks/README.md records them, after a blank line."""
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
