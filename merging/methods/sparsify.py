"""Pruning of task vectors (pure tensor functions shared by TIES, DARE and graft).

These follow mergekit 0.1.5's ``mergekit.sparsify`` semantics: ``density`` is the
fraction kept, ``density >= 1`` keeps everything, a positive density keeps at
least one element (``max(1, int(density * numel))`` exactly), and rescaling restores
the L1 norm of the unpruned tensor.

Magnitude pruning is computed as a cut-off rather than a sort: mergekit argsorts every
task vector (seconds for a 25M-entry embedding); here a sample brackets the cut-off,
one blocked pass counts what lies above the bracket and collects the narrow band
inside it, and only that band is sorted. Among entries whose magnitude equals the
cut-off the lowest flat indices are kept; mergekit's unstable argsort may keep other
entries of the same magnitude, so outputs can differ there and only there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

BLOCK = 1 << 20  # entries per block (4 MiB of float32): amortises per-op overhead, stays near cache
_SAMPLE = 1 << 17
_MARGIN = 0.006  # half-width of the sampled quantile bracket (about 5 standard errors)


@dataclass(frozen=True)
class Cutoff:
    """Keep entries with ``|x| > value``, plus the entries at flat indices ``ties``
    (whose magnitude equals ``value``); then multiply by ``scale``.

    Applying it is one fused ``hardshrink`` per block; the few tied entries are patched
    in by index.
    """

    value: float
    ties: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    scale: float = 1.0

    @property
    def keeps_all(self) -> bool:
        return self.value == float("-inf")

    def prune(self, delta: torch.Tensor, start: int) -> torch.Tensor:
        """The kept part of a flat block of a task vector that starts at flat index ``start``."""
        if self.keeps_all:
            return delta
        kept = F.hardshrink(delta, self.value) if self.value >= 0 else delta
        if self.ties.numel():
            lo, hi = torch.searchsorted(
                self.ties, torch.tensor([start, start + delta.numel()])
            ).tolist()
            local = self.ties[lo:hi] - start
            kept[local] = delta[local]
        return kept


KEEP_ALL = Cutoff(float("-inf"))


def blocks(numel: int):
    """``slice`` objects covering ``range(numel)`` in blocks of ``BLOCK``."""
    return (slice(start, min(numel, start + BLOCK)) for start in range(0, numel, BLOCK))


def magnitude_cutoff(
    base: torch.Tensor, model: torch.Tensor, density: float, rescale: bool = False
) -> Cutoff:
    """The cut-off keeping the ``density`` fraction of ``|model - base|`` with the largest
    magnitude."""
    n = base.numel()
    if density >= 1:
        return KEEP_ALL
    if density <= 0 or n == 0:
        return Cutoff(float("inf"))
    k = max(1, int(density * n))
    flat_base, flat_model = base.reshape(-1), model.reshape(-1)
    low, high = _bracket(flat_base, flat_model, k)
    n_above, band_values, band_index = 0, [], []
    for s in blocks(n):
        # numpy's comparisons and compaction are several times faster than torch's here
        mag = (flat_model[s] - flat_base[s]).abs_().numpy()
        n_above += int(np.count_nonzero(mag > high))
        inside = np.flatnonzero((mag >= low) & (mag <= high))
        band_values.append(mag[inside])
        band_index.append(inside + s.start)
    values, index = (
        torch.from_numpy(np.concatenate(band_values)),
        torch.from_numpy(np.concatenate(band_index)),
    )
    if not n_above < k <= n_above + values.numel():  # the sample missed the cut-off
        values, index, n_above = (flat_model - flat_base).abs(), torch.arange(n), 0
    cutoff = _exact_cutoff(values, index, k - n_above)
    return _with_scale(cutoff, flat_base, flat_model) if rescale else cutoff


def _bracket(flat_base: torch.Tensor, flat_model: torch.Tensor, k: int) -> tuple[float, float]:
    """Magnitudes that bracket the k-th largest, from a fixed sample (full range for small
    tensors)."""
    n = flat_base.numel()
    if n <= _SAMPLE:
        return float("-inf"), float("inf")
    pick = _sample_index(n)
    sample = (flat_model[pick] - flat_base[pick]).abs()
    q = 1 - k / n
    # kthvalue is a selection, not a sort: ~10x cheaper than torch.quantile here
    rank = lambda p: min(_SAMPLE, max(1, round(p * _SAMPLE)))  # noqa: E731
    low = torch.kthvalue(sample, rank(q - _MARGIN)).values if q - _MARGIN > 0 else -float("inf")
    high = torch.kthvalue(sample, rank(q + _MARGIN)).values if q + _MARGIN < 1 else float("inf")
    return float(low), float(high)


@lru_cache(maxsize=64)
def _sample_index(n: int) -> torch.Tensor:
    """Fixed random sample positions for tensors of ``n`` entries, sorted for memory locality."""
    return torch.randint(n, (_SAMPLE,), generator=torch.Generator().manual_seed(0)).sort().values


def _exact_cutoff(values: torch.Tensor, index: torch.Tensor, need: int) -> Cutoff:
    """Among candidate magnitudes (with flat indices), keep the ``need`` largest."""
    value = float(torch.topk(values, need).values[-1])
    greater = int(torch.count_nonzero(values > value))
    tied = index[values == value]  # ascending: candidates were collected in index order
    return Cutoff(value, tied[: need - greater].to(torch.long).contiguous())


def _with_scale(
    cutoff: Cutoff, flat_base: torch.Tensor, flat_model: torch.Tensor, eps: float = 1e-7
) -> Cutoff:
    """The cut-off with mergekit's L1 rescale: ||delta||_1 / ||kept||_1."""
    before = after = 0.0
    for s in blocks(flat_base.numel()):
        delta = flat_model[s] - flat_base[s]
        before += float(delta.abs().sum(dtype=torch.float64))
        after += float(cutoff.prune(delta, s.start).abs().sum(dtype=torch.float64))
    if before < eps or after < eps:
        return cutoff
    return Cutoff(cutoff.value, cutoff.ties, before / after)


def magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries of ``delta`` with the largest magnitude."""
    cutoff = magnitude_cutoff(torch.zeros_like(delta), delta, density)
    return cutoff.prune(delta.reshape(-1).clone(), 0).reshape(delta.shape)


def bernoulli(
    delta: torch.Tensor, density: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Keep each entry independently with probability ``density`` (DARE's drop)."""
    if density >= 1:
        return delta
    probs = torch.full_like(delta, density, dtype=torch.float32)
    return delta * torch.bernoulli(probs, generator=generator).to(delta.dtype)


def rescale_l1(original: torch.Tensor, pruned: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale ``pruned`` so its L1 norm equals that of ``original`` (mergekit's ``rescale``)."""
    before, after = original.abs().sum(), pruned.abs().sum()
    if before < eps or after < eps:
        return pruned
    return pruned * (before / after)
