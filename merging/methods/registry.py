"""Merge methods registered by name; each is a pure function over tensors.

A method is a function whose first parameters are tensors and whose keyword-only
parameters are its recipe parameters. The decorator reads the signature, so a
method declares its parameters, their defaults and their scope exactly once:

    @merge_method("ties", base="required")
    def ties(base, models, *, weight: PerModel[float], density: PerModel[float] = 1.0,
             normalize: bool = True) -> torch.Tensor: ...

``PerModel[T]`` marks a parameter that has one value per (non-base) model; the
function receives a list. A trailing underscore maps a Python keyword to the
recipe key (``lambda_`` is read from ``lambda``). A ``generator`` keyword marks a
random method: the executor passes a ``torch.Generator`` seeded per tensor.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Sequence, get_args, get_origin, get_type_hints

import torch

BasePolicy = Literal["required", "ignored"]
_PER_MODEL = "per_model"
_MISSING = object()


class _PerModelAlias:
    """``PerModel[float]`` reads as a list of floats, one per model."""

    def __getitem__(self, item: Any) -> Any:
        return Annotated[Sequence[item], _PER_MODEL]


PerModel = _PerModelAlias()  # type: ignore[assignment]


@dataclass(frozen=True)
class ParamSpec:
    """One recipe parameter of a method."""

    name: str
    arg: str
    per_model: bool
    kind: type = float
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its function and what its signature declares."""

    name: str
    fn: Callable[..., torch.Tensor]
    base: BasePolicy
    params: tuple[ParamSpec, ...] = field(default_factory=tuple)
    random: bool = False
    min_models: int = 1
    max_models: int | None = None
    elementwise: bool = False
    summary: str = ""

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict[str, Any]:
        """Defaults of every optional parameter, by recipe key."""
        return {p.name: p.default for p in self.params if not p.required}

    def __call__(self, base, models, params: dict[str, Any], generator=None) -> torch.Tensor:
        kwargs = {p.arg: _broadcast(params[p.name], p, len(models)) for p in self.params if p.name in params}
        if self.random:
            kwargs["generator"] = generator
        if self.base == "required":
            return self.fn(base, models, **kwargs)
        return self.fn(models, **kwargs)


def _broadcast(value: Any, param: ParamSpec, count: int) -> Any:
    """A scalar given for a per-model parameter applies to every model."""
    if param.per_model and not isinstance(value, (list, tuple)):
        return [value] * count
    return value


_METHODS: dict[str, MethodSpec] = {}


def merge_method(
    name: str,
    *,
    base: BasePolicy,
    min_models: int = 1,
    max_models: int | None = None,
    elementwise: bool = False,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Register a pure tensor function as merge method ``name``; duplicates are errors.

    ``elementwise`` declares that each output entry depends only on the same entry of
    the inputs, so the executor may feed large tensors in row blocks.
    """

    def decorate(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in _METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        _METHODS[name] = _spec_from_function(name, fn, base, min_models, max_models, elementwise)
        return fn

    return decorate


def _spec_from_function(name, fn, base, min_models, max_models, elementwise) -> MethodSpec:
    hints = get_type_hints(fn, include_extras=True)
    params, random = [], False
    for arg in inspect.signature(fn).parameters.values():
        if arg.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if arg.name == "generator":
            random = True
            continue
        hint = hints.get(arg.name, float)
        per_model = get_origin(hint) is Annotated and _PER_MODEL in get_args(hint)
        kind = get_args(get_args(hint)[0])[0] if per_model else hint
        default = _MISSING if arg.default is inspect.Parameter.empty else arg.default
        params.append(ParamSpec(arg.name.rstrip("_"), arg.name, per_model, kind, default))
    summary = (inspect.getdoc(fn) or "").split("\n")[0]
    return MethodSpec(name, fn, base, tuple(params), random, min_models, max_models, elementwise, summary)


def get_method(name: str) -> MethodSpec:
    """The native method called ``name``; unknown names list the known ones."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; native: {', '.join(native_methods())}") from None


def native_methods() -> list[str]:
    """Names of every natively implemented method, sorted."""
    return sorted(_METHODS)


def unregister(name: str) -> None:
    """Remove a method (for tests that register throwaway methods)."""
    _METHODS.pop(name, None)
