"""`accuracy` and `accuracy_norm`: pick the choice the model finds most likely.

Each choice is scored as the completion of the prompt, in the training layout
(bos + prompt, choice + eos): its log-likelihood is the sum of the log-probabilities of the
choice's tokens and the end-of-sequence token. The eos makes " 13" and " 137" comparable: a
choice that is a prefix of another is not favoured for being shorter. `accuracy` picks the
highest sum; `accuracy_norm` the highest sum per scored token (length-normalised).

`preference_accuracy` scores a preference pair, whose choices are the chosen and the rejected
completion: 1 when the chosen one's log-likelihood is strictly higher (a tie is not a
preference). Training reports the same number on the prepared selection split
(`engine.train.preference`).
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


@metric("preference_accuracy", needs="choices")
def preference_accuracy(logprobs: list[float], lengths: list[int], answer: int) -> float:
    chosen, rejected = logprobs[answer], logprobs[1 - answer]
    return float(chosen > rejected)
