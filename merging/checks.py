"""Refuse inputs that cannot be merged, before any data is read where possible.

Every check raises ``MergeError`` naming the tensor and the models. Floating-point
inputs with different dtypes are allowed: everything is combined in float32, and the
output takes ``out_dtype``, else ``dtype``, else the promoted input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from merging.errors import MergeError
from merging.io import DTYPE_NAMES, ModelFiles, TensorInfo

if TYPE_CHECKING:
    import torch


def check_architectures(models: Mapping[str, ModelFiles]) -> None:
    """All models declare the same ``model_type`` and ``architectures`` in config.json."""
    seen = {name: _arch(files.config()) for name, files in models.items()}
    if len(set(seen.values())) > 1:
        listing = "; ".join(f"{name}: {arch}" for name, arch in seen.items())
        raise MergeError(f"models have different architectures ({listing})")


def _arch(config: dict) -> tuple:
    return config.get("model_type"), tuple(config.get("architectures") or ())


def check_tensor_sets(models: Mapping[str, ModelFiles]) -> list[str]:
    """Every model has the same tensors; returns their names in the first model's order."""
    names = {name: set(files.info) for name, files in models.items()}
    union = set().union(*names.values())
    for model, present in names.items():
        missing = sorted(union - present)
        if missing:
            holders = [m for m, p in names.items() if missing[0] in p]
            raise MergeError(
                f"tensor {missing[0]!r} is missing from {model} (present in {', '.join(holders)})"
                + (f"; {len(missing) - 1} more missing" if len(missing) > 1 else "")
            )
    return next(iter(models.values())).names()


def check_shapes(tensor: str, infos: Mapping[str, TensorInfo]) -> None:
    """Same shape everywhere, and either all floating point or all the same dtype."""
    shapes = {model: info.shape for model, info in infos.items()}
    if len(set(shapes.values())) > 1:
        raise MergeError(f"tensor {tensor!r} has different shapes: {_listing(shapes)}")
    dtypes = {model: DTYPE_NAMES[info.code] for model, info in infos.items()}
    floating = [info.is_floating_point for info in infos.values()]
    if any(floating) and not all(floating) or not any(floating) and len(set(dtypes.values())) > 1:
        raise MergeError(f"tensor {tensor!r} has incompatible dtypes: {_listing(dtypes)}")


def output_dtype(infos: Sequence[TensorInfo], requested: str | None) -> str:
    """Code of a merged tensor's dtype: the requested code for floats, else the inputs'
    promoted as torch promotes them (float16 with bfloat16 gives float32)."""
    codes = {info.code for info in infos}
    if not infos[0].is_floating_point:
        return infos[0].code  # check_shapes allows only one dtype for non-float tensors
    if requested is not None:
        return requested
    if len(codes) == 1:
        return codes.pop()
    return "F64" if "F64" in codes else "F32"  # any mixture of F32, F16 and BF16 promotes to F32


def check_finite(tensor: str, value: torch.Tensor | np.ndarray, models: str) -> None:
    """Refuse NaN or Inf in a torch tensor or numpy array; ``models`` names where it came from."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind != "f" or value.size == 0:
            return
        # a sum is NaN or Inf when an entry is (or when finite entries overflow: look closer then)
        if math.isfinite(float(value.sum(dtype=np.float32))) or bool(np.isfinite(value).all()):
            return
        bad = "NaN" if bool(np.isnan(value).any()) else "Inf"
        raise MergeError(f"tensor {tensor!r} contains {bad} ({models})")
    if not value.is_floating_point() or value.numel() == 0:
        return
    import torch

    # min and max propagate NaN and show Inf; one fused pass, ~10x faster than isfinite().all()
    low, high = torch.aminmax(value)
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        bad = "NaN" if bool(torch.isnan(value).any()) else "Inf"
        raise MergeError(f"tensor {tensor!r} contains {bad} ({models})")


def check_equal(
    tensor: str, values: Mapping[str, torch.Tensor | np.ndarray]
) -> torch.Tensor | np.ndarray:
    """Non-float buffers (torch tensors or numpy arrays) are copied only when every model agrees
    exactly."""
    first_name, first = next(iter(values.items()))
    for model, value in values.items():
        if tuple(first.shape) != tuple(value.shape) or not bool((first == value).all()):
            raise MergeError(
                f"non-float tensor {tensor!r} differs between {first_name} and {model}"
            )
    return first


def _listing(values: Mapping[str, object]) -> str:
    return ", ".join(f"{model}: {value}" for model, value in values.items())
