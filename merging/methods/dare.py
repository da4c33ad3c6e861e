"""DARE (Yu et al. 2024): drop task-vector entries at random, rescale, then add.

``dare_linear`` sums the pruned task vectors; ``dare_ties`` adds TIES's sign election.
As in mergekit 0.1.5, ``rescale`` restores each pruned task vector's L1 norm (the paper
divides by ``density``; both keep the expected size of the update).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .registry import PerModel, merge_method
from .sparsify import bernoulli, rescale_l1
from .task_vectors import combine, weighted_deltas


def _pruner(rescale: bool, generator: torch.Generator | None):
    def prune(delta: torch.Tensor, d: float) -> torch.Tensor:
        kept = bernoulli(delta, d, generator)
        return rescale_l1(delta, kept) if rescale and d < 1 else kept

    return prune


@merge_method("dare_linear", base="required")
def dare_linear(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    *,
    weight: PerModel[float] = 1.0,
    density: PerModel[float] = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    int8_mask: bool = False,
    lambda_: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random drop with keep probability ``density`` (default 1.0: no drop), then task arithmetic."""
    deltas = weighted_deltas(base, models, weight, density, _pruner(rescale, generator))
    return combine(base, deltas, weight, consensus=False, normalize=normalize, lambda_=lambda_)


@merge_method("dare_ties", base="required")
def dare_ties(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    *,
    weight: PerModel[float] = 1.0,
    density: PerModel[float] = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    int8_mask: bool = False,
    lambda_: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random drop with keep probability ``density`` (default 1.0: no drop), then TIES sign election."""
    deltas = weighted_deltas(base, models, weight, density, _pruner(rescale, generator))
    return combine(base, deltas, weight, consensus=True, normalize=normalize, lambda_=lambda_)
