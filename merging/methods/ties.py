"""TIES merging (Yadav et al. 2023): trim, elect sign, disjoint mean."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.methods.registry import PerModel, merge_method
from merging.methods.sparsify import magnitude_cutoff
from merging.methods.task_vectors import blocked_combine


@merge_method("ties", base="required")
def ties(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    *,
    weight: PerModel[float] = 1.0,
    density: PerModel[float] = 1.0,
    normalize: bool = True,
    rescale: bool = False,
    int8_mask: bool = False,
    lambda_: float = 1.0,
) -> torch.Tensor:
    """Keep the top ``density`` of each task vector by magnitude, keep entries that agree
    with the sign of the weighted sum, and average what is kept.

    ``density`` defaults to 1.0 as in mergekit: nothing is trimmed unless it is set.
    ``int8_mask`` only saves memory in mergekit; the result is the same, so it is accepted
    and ignored.
    """

    cutoffs = [magnitude_cutoff(base, model, d, rescale) for model, d in zip(models, density)]
    return blocked_combine(
        base, models, weight, cutoffs, consensus=True, normalize=normalize, lambda_=lambda_
    )
