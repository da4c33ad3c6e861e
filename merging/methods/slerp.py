"""Spherical linear interpolation between the base and one other model, per tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.methods.registry import merge_method

DOT_THRESHOLD = 0.9995  # mergekit's: above this |cos| the pair counts as collinear
EPS = 1e-8


@merge_method("slerp", base="required", min_models=1, max_models=1)
def slerp(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    *,
    t: float,
) -> torch.Tensor:
    """Interpolate along the great circle from ``base`` (t=0) to the other model (t=1).

    The angle comes from the normalised flattened tensors; nearly collinear pairs
    (|cos| > 0.9995) fall back to linear interpolation, as in mergekit.
    """
    a, b = base.reshape(-1), models[0].reshape(-1)
    norm_a, norm_b = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    norm_a = norm_a if norm_a > EPS else torch.ones_like(norm_a)
    norm_b = norm_b if norm_b > EPS else torch.ones_like(norm_b)
    dot = torch.dot(a / norm_a, b / norm_b).clamp(-1, 1)
    if dot.abs() > DOT_THRESHOLD:
        return torch.lerp(base, models[0], t)
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    coef_a = torch.sin((1 - t) * theta) / sin_theta
    coef_b = torch.sin(t * theta) / sin_theta
    return coef_a * base + coef_b * models[0]
