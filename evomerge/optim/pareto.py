"""The Pareto front of a set of objective vectors, under maximization of every objective."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether `a` Pareto-dominates `b`: at least as good everywhere and strictly better somewhere (maximizing)."""
    better = False
    for x, y in zip(a, b, strict=True):
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices (ascending) of the non-dominated points, every objective maximized. O(n²).

    Equal points do not dominate each other, so duplicates on the front are all kept (a tie is not a loss).
    NaN compares false both ways: a NaN objective neither dominates nor is dominated through that objective.
    """
    pts = [tuple(float(v) for v in p) for p in points]
    if pts and len({len(p) for p in pts}) != 1:
        raise ValueError("pareto_front: every point needs the same number of objectives")
    return [i for i, p in enumerate(pts) if not any(dominates(q, p) for j, q in enumerate(pts) if j != i)]
