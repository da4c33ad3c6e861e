"""A metric that fails on purpose, past every check before Ray: a trial that computes it on a
task whose answers are words raises at run time (a user's metric with a bug)."""

from __future__ import annotations

FAILS_ON_WORDS = "tests.failing:fails_on_words"


def fails_on_words(prediction: str, reference: str) -> float:
    """Exact match on numbers; raises on a word answer (the demo's `reverse` task)."""
    if reference.strip()[:1].isalpha():
        raise ValueError("this metric fails on word answers, on purpose")
    return float(prediction.strip() == reference.strip())
