"""Task arithmetic (Ilharco et al. 2023): add weighted task vectors to the base."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.methods.registry import PerModel, merge_method
from merging.methods.task_vectors import combine, weighted_deltas


@merge_method("task_arithmetic", base="required", elementwise=True)
def task_arithmetic(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    *,
    weight: PerModel[float] = 1.0,
    normalize: bool = False,
    lambda_: float = 1.0,
) -> torch.Tensor:
    """base + lambda * sum_i w_i (x_i - base), divided by sum_i w_i when ``normalize``."""
    deltas = weighted_deltas(base, models, weight, [1.0] * len(models), prune=None)
    return combine(base, deltas, weight, consensus=False, normalize=normalize, lambda_=lambda_)
