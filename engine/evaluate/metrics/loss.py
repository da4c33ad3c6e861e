"""`loss` and `ppl`: token-weighted mean causal-LM loss over the target tokens, and exp of it.

The target tokens are the completion tokens (and the end-of-sequence token) of a
prompt/completion example, or every token of a text example: the tokens whose label is not
IGNORE, as in training.
"""

from __future__ import annotations

import math

from engine.evaluate.metrics.registry import metric


def mean_loss(observations: list[dict]) -> float:
    tokens = sum(o["tokens"] for o in observations)
    return sum(o["nll"] for o in observations) / tokens if tokens else float("nan")


@metric("loss", needs="tokens", per_example=False)
def loss(observations: list[dict]) -> float:
    """Summed loss over all target tokens of the set / number of those tokens."""
    return mean_loss(observations)


@metric("ppl", needs="tokens", per_example=False)
def ppl(observations: list[dict]) -> float:
    """exp(loss); capped at exp(50) like the training report, so it stays finite."""
    return math.exp(min(mean_loss(observations), 50.0))
