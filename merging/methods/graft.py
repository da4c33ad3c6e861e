"""Grafting (Panigrahi et al. 2023, "Task-specific skill localization"), magnitude variant.

Only the largest ``density`` fraction of |fine-tuned - base| in each tensor is carried
over to the base; the rest of the fine-tuned update is dropped. With several models the
grafted task vectors are added, each scaled by its ``weight``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.methods.registry import PerModel, merge_method
from merging.methods.sparsify import magnitude_cutoff
from merging.methods.task_vectors import blocked_combine


@merge_method("graft", base="required")
def graft(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    *,
    density: PerModel[float] = 0.1,
    weight: PerModel[float] = 1.0,
) -> torch.Tensor:
    """base + sum_i w_i * top_density(|x_i - base|) of (x_i - base); ``density`` defaults to 0.1."""
    cutoffs = [magnitude_cutoff(base, model, d) for model, d in zip(models, density)]
    return blocked_combine(
        base, models, weight, cutoffs, consensus=False, normalize=False, lambda_=1.0
    )
