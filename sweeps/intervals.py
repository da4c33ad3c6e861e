"""How sure a score is: 95% intervals of evaluation metrics over a set's examples.

Every score a user compares carries an interval. A mean of 0/1 outcomes per example (accuracy,
exact match) gets a Wilson score interval, which stays inside [0, 1] and is honest for small
sets; a mean of other per-example values gets the normal interval of the mean; a metric that is
not a mean of per-example values (the token-weighted loss, a user metric over the whole set) gets
a percentile bootstrap over examples, with a fixed seed so the same results give the same
interval. Pure numpy: no Ray, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal
RESAMPLES = 1000
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A 95% interval [low, high] around a score, and the score's standard error."""

    stderr: float
    low: float
    high: float

    @classmethod
    def unknown(cls) -> Interval:
        return cls(math.nan, math.nan, math.nan)


def of_mean(values: Sequence[float]) -> Interval:
    """The interval of the mean of per-example values: Wilson's for 0/1 values, else normal."""
    x = np.asarray(values, dtype=float)
    if x.size == 0 or not np.isfinite(x).all():
        return Interval.unknown()
    if np.isin(x, (0.0, 1.0)).all():
        return wilson(int(x.sum()), x.size)
    if x.size < 2:
        return Interval.unknown()
    stderr = float(x.std(ddof=1) / math.sqrt(x.size))
    mean = float(x.mean())
    return Interval(stderr, mean - Z95 * stderr, mean + Z95 * stderr)


def wilson(successes: int, n: int) -> Interval:
    """Wilson's score interval of a proportion `successes / n`."""
    if n == 0:
        return Interval.unknown()
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2)) / (1 + Z95**2 / n)
    return Interval(math.sqrt(p * (1 - p) / n), centre - half, centre + half)


def of_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> Interval:
    """The bootstrap interval of sum(numerators) / sum(denominators) over resampled examples
    (the token-weighted mean loss: per-example summed loss over per-example token counts)."""
    num, den = np.asarray(numerators, float), np.asarray(denominators, float)
    if num.size < 2:
        return Interval.unknown()
    idx = np.random.default_rng(SEED).integers(0, num.size, size=(RESAMPLES, num.size))
    totals = den[idx].sum(axis=1)
    ratios = np.where(totals > 0, num[idx].sum(axis=1) / np.maximum(totals, 1e-300), np.nan)
    return _percentiles(ratios)


def of_statistic(statistic: Callable[[list], float], items: list, resamples: int = 200) -> Interval:
    """The bootstrap interval of any statistic of a list of examples (slower: it calls
    `statistic` once per resample)."""
    if len(items) < 2:
        return Interval.unknown()
    rng = np.random.default_rng(SEED)
    draws = [
        statistic([items[i] for i in rng.integers(0, len(items), len(items))])
        for _ in range(resamples)
    ]
    return _percentiles(np.asarray(draws, dtype=float))


def transformed(interval: Interval, fn: Callable[[float], float]) -> Interval:
    """The interval of `fn(score)` for an increasing `fn` (ppl = exp(loss)); its standard error
    by the delta method is not attempted: it is left unknown."""
    return Interval(math.nan, fn(interval.low), fn(interval.high))


def _percentiles(draws: np.ndarray) -> Interval:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Interval.unknown()
    low, high = np.percentile(draws, [2.5, 97.5])
    return Interval(
        float(draws.std(ddof=1)) if draws.size > 1 else math.nan, float(low), float(high)
    )
