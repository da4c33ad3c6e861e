"""DARE (Yu et al. 2024): drop task-vector entries at random, rescale, then add.

``dare_linear`` sums the pruned task vectors; ``dare_ties`` adds TIES's sign election.
As in mergekit 0.1.5, ``rescale`` restores each pruned task vector's L1 norm (the paper
divides by ``density``; both keep the expected size of the update).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.methods.registry import PerModel, merge_method
from merging.methods.sparsify import bernoulli, rescale_l1
from merging.methods.task_vectors import combine, weighted_deltas


def _pruner(rescale: bool, generator: torch.Generator | None):
    def prune(delta: torch.Tensor, d: float) -> torch.Tensor:
        kept = bernoulli(delta, d, generator)
        return rescale_l1(delta, kept) if rescale and d < 1 else kept

    return prune


def _dare(consensus: bool, doc: str):
    """One DARE method; `consensus` adds TIES's sign election after the random drop. The
    registry reads its parameters from `method`'s signature; the work is in `_merge`, which
    runs when a merge does (not when this module is imported)."""

    def method(
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
        # Not mutated: `_dare` runs when the module is imported, before any test, so mutation
        # testing cannot tell which tests reach this line; it only forwards to `_merge`,
        # which is mutated and tested like any function.
        # pragma: no mutate start
        return _merge(
            base,
            models,
            weight,
            density,
            normalize,
            rescale,
            lambda_,
            generator,
            consensus=consensus,
        )
        # pragma: no mutate end

    method.__doc__ = doc  # the registry reads the summary line from it
    return method


def _merge(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    weight: PerModel[float],
    density: PerModel[float],
    normalize: bool,
    rescale: bool,
    lambda_: float,
    generator: torch.Generator | None,
    *,
    consensus: bool,
) -> torch.Tensor:
    deltas = weighted_deltas(base, models, weight, density, _pruner(rescale, generator))
    return combine(base, deltas, weight, consensus=consensus, normalize=normalize, lambda_=lambda_)


dare_linear = merge_method("dare_linear", base="required")(
    _dare(
        False,
        "Random drop with keep probability ``density`` (default 1.0: no drop), then task "
        "arithmetic.",
    )
)
dare_ties = merge_method("dare_ties", base="required")(
    _dare(
        True,
        "Random drop with keep probability ``density`` (default 1.0: no drop), then TIES sign "
        "election.",
    )
)
