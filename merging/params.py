"""Resolve recipe parameters for one tensor: filters, layer gradients, defaults.

Precedence and semantics follow mergekit 0.1.5: a model's own parameters win over
the top-level ``parameters``, which win over the method's defaults. A list of numbers
is a gradient over layers, interpolated at t = layer / (num_layers - 1); tensors
outside the layer stack (embeddings, final norm, head) use t = 0. A list of
``{filter, value}`` picks the first entry whose filter is a substring of the tensor name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter

from merging.methods.registry import MethodSpec, ParamSpec
from merging.recipe import Conditional, Recipe

_LAYER = re.compile(r"\.(\d+)\.")


def layer_position(tensor_name: str, num_layers: int) -> float:
    """mergekit's gradient position t of a tensor: 0 outside layers, layer/(n-1) inside."""
    match = _LAYER.search(tensor_name)
    if not match:
        return 0.0
    return int(match[1]) / (num_layers - 1) if num_layers > 1 else 1.0


def evaluate(setting: Any, tensor_name: str, t: float) -> Any:
    """Value of one parameter setting for ``tensor_name`` at gradient position ``t``."""
    if isinstance(setting, Conditional):
        setting = [setting]
    if not isinstance(setting, list):
        return setting
    if not setting:
        return None
    if all(isinstance(item, Conditional) for item in setting):
        for cond in setting:
            if cond.filter in (None, "*") or cond.filter in tensor_name:
                return evaluate(cond.value, tensor_name, t)
        return None
    return _gradient(setting, t)


def _gradient(values: Sequence[Any], t: float) -> Any:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    low = int(scaled)
    high = min(len(values) - 1, low + 1)
    frac = scaled - low
    return (1 - frac) * values[low] + frac * values[high]


class ParameterResolver:
    """Per-tensor parameter values for a native method over a recipe's models."""

    def __init__(self, recipe: Recipe, spec: MethodSpec, models: Sequence[str], num_layers: int):
        self.spec = spec
        self.num_layers = num_layers
        self.shared = recipe.parameters or {}
        by_name = {entry.model: entry.parameters or {} for entry in recipe.models or []}
        self.per_model = [by_name.get(name, {}) for name in models]
        self._adapters = {p.name: TypeAdapter(p.kind) for p in spec.params}

    def resolve(self, tensor_name: str) -> dict[str, Any]:
        """``{parameter: value}``, per-model parameters as lists in model order."""
        t = layer_position(tensor_name, self.num_layers)
        out = {}
        for param in self.spec.params:
            if param.per_model:
                out[param.name] = [
                    self._one(param, (own, self.shared), tensor_name, t) for own in self.per_model
                ]
            else:
                out[param.name] = self._one(param, (self.shared,), tensor_name, t)
        return out

    def _one(self, param: ParamSpec, scopes: Sequence[dict], tensor_name: str, t: float) -> Any:
        for scope in scopes:
            if param.name in scope:
                value = evaluate(scope[param.name], tensor_name, t)
                if value is not None:
                    return self._adapters[param.name].validate_python(value)
        if param.required:
            raise ValueError(
                f"parameters.{param.name}: required by {self.spec.name} (tensor {tensor_name})"
            )
        return param.default
