"""`exact_match`: the greedy generation, stripped, equals the reference, stripped.

The generation stops at the end-of-sequence token or after the set's `max_new_tokens`.
"""

from __future__ import annotations

from engine.evaluate.metrics.registry import metric


@metric("exact_match", needs="generation")
def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())
