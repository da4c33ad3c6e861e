"""`loss` and `ppl`: token-weighted mean causal-LM loss over the target tokens, and exp of it.

The target tokens are the completion tokens (and the end-of-sequence token) of a
prompt/completion example, or every token of a text example: the tokens whose label is not
IGNORE, as in training.
"""

from __future__ import annotations

import math

from engine.evaluate.metrics.registry import metric
from sweeps import intervals
from sweeps.intervals import Interval


def mean_loss(observations: list[dict]) -> float:
    tokens = sum(o["tokens"] for o in observations)
    return sum(o["nll"] for o in observations) / tokens if tokens else float("nan")


def loss_interval(observations: list[dict]) -> Interval:
    """The bootstrap interval of the token-weighted loss, resampling examples."""
    return intervals.of_ratio([o["nll"] for o in observations], [o["tokens"] for o in observations])


def capped_exp(value: float) -> float:
    return math.exp(min(value, 50.0))


@metric(
    "loss",
    needs="tokens",
    per_example=False,
    spread=loss_interval,
)
def loss(observations: list[dict]) -> float:
    """Summed loss over all target tokens of the set / number of those tokens."""
    return mean_loss(observations)


@metric(
    "ppl",
    needs="tokens",
    per_example=False,
    spread=lambda observations: intervals.transformed(loss_interval(observations), capped_exp),
)
def ppl(observations: list[dict]) -> float:
    """exp(loss); capped at exp(50) like the training report, so it stays finite."""
    return capped_exp(mean_loss(observations))
