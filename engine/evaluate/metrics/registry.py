"""The metric registry: metrics by name, each a pure reduction over per-example observations.

A metric says which observation it needs from the model (`tokens`: summed negative
log-likelihood and token count of the target; `choices`: summed log-probability and token count
of every choice; `generation`: the greedy generation and the reference) and turns the
observations of one evaluation set into one number. The evaluation actors produce only the
observations; metrics run on the driver, so a user metric never has to travel to a worker.

Every metric also gives a 95% interval of its value over the set's examples
(`sweeps.intervals`): a per-example metric the interval of a mean, any other the metric's own
`interval` function, or else a bootstrap of its score.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from sweeps import intervals
from sweeps.evaluation import OBSERVATIONS, declare_metric
from sweeps.intervals import Interval

Score = Callable[[list[dict]], float]
Spread = Callable[[list[dict]], Interval]


@dataclass(frozen=True)
class Metric:
    """A named reduction of one set's observations (`needs` says which) to one value, and the
    95% interval of that value (`spread`; by default a bootstrap of `score` over examples)."""

    name: str
    needs: str
    score: Score
    spread: Spread | None = None

    def interval(self, observations: list[dict]) -> Interval:
        if self.spread is not None:
            return self.spread(observations)
        return intervals.of_statistic(self.score, observations)


_REGISTRY: dict[str, Metric] = {}


def metric(name: str, needs: str = "generation", per_example: bool = True, spread=None):
    """Register a metric function under `name`.

    With `per_example` (the default) the function scores one example and the metric is the
    mean; its arguments are named after the observation's keys (`generation`:
    `prediction, reference`; `choices`: `logprobs, lengths, answer`; `tokens`: `nll, tokens`).
    Otherwise it gets the list of every example's observation dict and returns the value;
    `spread` then gives its 95% interval from the same list (default: a bootstrap).
    """

    def register(fn: Callable) -> Callable:
        if per_example:
            add(Metric(name, needs, _mean_of(fn), _spread_of(fn)))
        else:
            add(Metric(name, needs, fn, spread))
        fn.raysoup_metric = _REGISTRY[name]
        return fn

    return register


def add(entry: Metric) -> None:
    """Register `entry`; a name already taken is refused."""
    if entry.needs not in OBSERVATIONS:
        raise ValueError(
            f"metric {entry.name!r}: needs must be one of {', '.join(OBSERVATIONS)}, "
            f"not {entry.needs!r}"
        )
    if entry.name in _REGISTRY:
        raise ValueError(f"metric {entry.name!r} is already registered")
    declare_metric(entry.name, entry.needs)
    _REGISTRY[entry.name] = entry


def get_metric(name: str) -> Metric:
    """The metric registered as `name`, or the function `module:function` (imported)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        raise ValueError(
            f"unknown metric {name!r}; known: {', '.join(sorted(_REGISTRY))} "
            "(or a user metric as `module:function`)"
        )
    return _imported(name)


def known() -> list[str]:
    return sorted(_REGISTRY)


def _imported(name: str) -> Metric:
    module_name, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"metric {name!r}: cannot import it ({err})") from None
    registered = getattr(fn, "raysoup_metric", None)
    if registered is not None:
        return Metric(name, registered.needs, registered.score, registered.spread)
    if not callable(fn):
        raise ValueError(f"metric {name!r}: {attr} is not a function")
    # A plain function is a per-example generation metric: (prediction, reference) -> float.
    return Metric(name, "generation", _mean_of(fn), _spread_of(fn))


def _per_example(fn: Callable) -> Callable[[list[dict]], list[float]]:
    params = list(inspect.signature(fn).parameters)
    return lambda observations: [float(fn(*(obs[p] for p in params))) for obs in observations]


def _mean_of(fn: Callable) -> Score:
    values_of = _per_example(fn)

    def score(observations: list[dict]) -> float:
        values = values_of(observations)
        return sum(values) / len(values) if values else float("nan")

    return score


def _spread_of(fn: Callable) -> Spread:
    values_of = _per_example(fn)
    return lambda observations: intervals.of_mean(values_of(observations))
