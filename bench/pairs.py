"""What every timing bench shares: variants run interleaved (A, B, A, B ...) so that a change
of load on the machine shifts both, and figures printed as median [min, max]."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable


def spread(xs: list[float], fmt: str = ".1f") -> str:
    """``median [min, max]`` of ``xs``; an infinite value reads ``never`` (a target not met)."""

    def one(x: float) -> str:
        return "never" if math.isinf(x) else format(x, fmt)

    return f"{one(statistics.median(xs))} [{one(min(xs))}, {one(max(xs))}]"


def interleaved(
    a: Callable[[], float], b: Callable[[], float], repeats: int
) -> tuple[list[float], list[float]]:
    """One untimed run of each, then ``repeats`` pairs a, b; the pairs' values of a and of b."""
    a(), b()  # warm-up, excluded
    pairs = [(a(), b()) for _ in range(repeats)]
    return [x for x, _ in pairs], [y for _, y in pairs]


def pair_ratios(top: list[float], bottom: list[float]) -> list[float]:
    """The ratio top / bottom of each pair (the same repeat of both variants)."""
    return [t / u for t, u in zip(top, bottom, strict=True)]
