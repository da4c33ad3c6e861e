"""`accuracy` and `accuracy_norm`: pick the choice the model finds most likely.

Each choice is scored as the completion of the prompt, in the training layout
(bos + prompt, choice + eos): its log-likelihood is the sum of the log-probabilities of the
choice's tokens and the end-of-sequence token. The eos makes " 13" and " 137" comparable: a
choice that is a prefix of another is not favoured for being shorter. `accuracy` picks the
highest sum; `accuracy_norm` the highest sum per scored token (length-normalised).
"""

from __future__ import annotations

from engine.evaluate.metrics.registry import metric


def pick(logprobs: list[float], lengths: list[int], normalise: bool = False) -> int:
    """Index of the best choice; the first one wins a tie."""
    scores = [lp / max(n, 1) for lp, n in zip(logprobs, lengths)] if normalise else logprobs
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


@metric("accuracy", needs="choices")
def accuracy(logprobs: list[float], lengths: list[int], answer: int) -> float:
    return float(pick(logprobs, lengths) == answer)


@metric("accuracy_norm", needs="choices")
def accuracy_norm(logprobs: list[float], lengths: list[int], answer: int) -> float:
    return float(pick(logprobs, lengths, normalise=True) == answer)
