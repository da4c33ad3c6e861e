"""Weighted average of whole models (Wortsman et al. 2022, "model soups")."""

from __future__ import annotations

from typing import Sequence

import torch

from .registry import PerModel, merge_method


@merge_method("linear", base="ignored", elementwise=True)
def linear(models: Sequence[torch.Tensor], *, weight: PerModel[float] = 1.0, normalize: bool = True) -> torch.Tensor:
    """sum_i w_i x_i, divided by sum_i w_i when ``normalize`` (mergekit's default)."""
    result = torch.zeros_like(models[0])
    for tensor, w in zip(models, weight):
        result.add_(tensor, alpha=w)
    if normalize:
        result.div_(sum(weight))
    return result
