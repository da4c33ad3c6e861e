"""Weighted average of whole models (Wortsman et al. 2022, "model soups")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from merging.methods.registry import PerModel, array_kernel, merge_method

if TYPE_CHECKING:
    import torch


@merge_method("linear", base="ignored", elementwise=True)
def linear(
    models: Sequence[torch.Tensor], *, weight: PerModel[float] = 1.0, normalize: bool = True
) -> torch.Tensor:
    """sum_i w_i x_i, divided by sum_i w_i when ``normalize`` (mergekit's default)."""
    result = models[0].new_zeros(models[0].shape)
    for tensor, w in zip(models, weight):
        result.add_(tensor, alpha=w)
    if normalize:
        result.div_(sum(weight))
    return result


def _unit_weights(*, weight: Sequence[float], normalize: bool = True) -> bool:
    # torch's add_ with alpha is a fused multiply-add; numpy has none, but with weights
    # of 0 or 1 the product is exact, so one rounding of the sum is all either does.
    return all(w in (0.0, 1.0) for w in weight)


@array_kernel("linear", accepts=_unit_weights)
def linear_arrays(
    models: Sequence[np.ndarray], *, weight: PerModel[float] = 1.0, normalize: bool = True
) -> np.ndarray:
    """``linear`` over float32 arrays for weights of 0 or 1, equal to it bit for bit."""
    result = np.zeros_like(models[0])  # 0 + x, as torch adds to zeros: -0.0 becomes +0.0
    for tensor, w in zip(models, weight):
        if w:
            result += tensor
    if normalize:
        with np.errstate(
            divide="ignore", invalid="ignore"
        ):  # weights summing to 0: the output check names it
            result /= np.float32(sum(weight))  # torch divides by the sum rounded to float32
    return result
