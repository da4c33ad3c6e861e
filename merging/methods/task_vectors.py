"""The arithmetic shared by every task-vector method (mergekit's generalized task arithmetic).

delta_i = prune(model_i - base) * weight_i
mask_i  = sign(delta_i) == sign(sum_j delta_j)          (TIES consensus only)
merged  = base + lambda * sum_i mask_i delta_i / (sum_i mask_i weight_i  if normalize)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from merging.methods.sparsify import Cutoff, blocks

Pruner = Callable[[torch.Tensor, float], torch.Tensor]


def weighted_deltas(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    weight: Sequence[float],
    density: Sequence[float],
    prune: Pruner | None,
) -> torch.Tensor:
    """Stack of ``weight_i * prune(model_i - base)``, one row per model."""
    deltas = torch.empty((len(models), *base.shape), dtype=base.dtype)
    for row, (model, w, d) in enumerate(zip(models, weight, density)):
        delta = model - base
        deltas[row] = (prune(delta, d) if prune else delta) * w
    return deltas


def sign_consensus(deltas: torch.Tensor) -> torch.Tensor:
    """Mask of entries whose sign agrees with the sign of the summed deltas (TIES)."""
    majority = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    return deltas.sign() == majority


def combine(
    base: torch.Tensor,
    deltas: torch.Tensor,
    weight: Sequence[float],
    *,
    consensus: bool,
    normalize: bool,
    lambda_: float,
) -> torch.Tensor:
    """Sum (optionally sign-elected) weighted deltas onto ``base``."""
    weights = torch.tensor(list(weight), dtype=deltas.dtype).reshape(-1, *([1] * base.dim()))
    if consensus:
        mask = sign_consensus(deltas).to(deltas.dtype)
        mixed = (deltas * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    if lambda_ != 1:
        mixed = mixed * lambda_
    return base + mixed


def blocked_combine(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    weight: Sequence[float],
    cutoffs: Sequence[Cutoff],
    *,
    consensus: bool,
    normalize: bool,
    lambda_: float,
) -> torch.Tensor:
    """``combine(base, weighted_deltas(...))`` for magnitude-pruned deltas, block by block.

    Same arithmetic, but each block of every task vector is formed, pruned, elected and
    summed while it is in cache, in place where possible, and no stack of full-size
    deltas is ever allocated.
    """
    flat_base = base.reshape(-1)
    flat_models = [m.reshape(-1) for m in models]
    out = torch.empty_like(flat_base)
    for s in blocks(flat_base.numel()):
        b = flat_base[s]
        deltas = [
            _pruned(model[s] - b, cutoff, w, s.start)
            for model, cutoff, w in zip(flat_models, cutoffs, weight)
        ]
        mixed = _elect(deltas, weight, normalize) if consensus else _sum(deltas, weight, normalize)
        torch.add(b, mixed, alpha=lambda_, out=out[s])
    return out.reshape(base.shape)


def _pruned(delta: torch.Tensor, cutoff: Cutoff, w: float, start: int) -> torch.Tensor:
    """``w * scale * delta`` where the cut-off keeps it, else 0."""
    return cutoff.prune(delta, start).mul_(w * cutoff.scale)


def _sum(deltas: list[torch.Tensor], weight: Sequence[float], normalize: bool) -> torch.Tensor:
    mixed = deltas[0]
    for delta in deltas[1:]:
        mixed += delta
    total = sum(weight)
    return mixed / (total if abs(total) >= 1e-8 else 1.0) if normalize else mixed


def _elect(deltas: list[torch.Tensor], weight: Sequence[float], normalize: bool) -> torch.Tensor:
    """TIES: keep entries whose sign is the sign of the sum (+ when the sum is 0).

    Written with float ops only (sign, clamp, multiply): masks and ``where`` on random
    patterns cost several times more per entry on CPU.
    """
    majority = deltas[0].clone()
    for delta in deltas[1:]:
        majority += delta
    majority.sign_().add_(0.5).sign_()  # +1 where the sum is >= 0, -1 where it is < 0
    mixed, divisor = torch.zeros_like(majority), torch.zeros_like(majority)
    for delta, w in zip(deltas, weight):
        agreeing = delta.mul_(majority).clamp_min_(0)  # |delta| where its sign agrees, else 0
        mixed += agreeing
        divisor.add_(agreeing.sign_(), alpha=w)
    mixed.mul_(majority)
    if not normalize:
        return mixed
    zero = divisor.sign().abs_().neg_().add_(1)  # 1 where no weight counts: divide by 1 there
    return mixed.div_(divisor.add_(zero))
