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

A method may also have an array kernel (:func:`array_kernel`): the same arithmetic
over numpy float32 arrays, bit for bit, for the parameter values it ``accepts``. The
executor then merges without importing torch, whose start-up (about 3 s) is most of
a small merge's time. The built-in method modules are imported on first use, so
validating a recipe or running an array kernel never imports torch either.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    get_args,
    get_origin,
    get_type_hints,
)

if TYPE_CHECKING:
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
    array_fn: Callable[..., Any] | None = None
    array_accepts: Callable[..., bool] | None = None

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict[str, Any]:
        """Defaults of every optional parameter, by recipe key."""
        return {p.name: p.default for p in self.params if not p.required}

    def __call__(
        self, base, models, params: dict[str, Any], generator=None, *, arrays: bool = False
    ):
        """Apply the method to torch tensors, or with ``arrays`` its array kernel to numpy
        arrays."""
        kwargs = self.arguments(params, len(models))
        if self.random:
            kwargs["generator"] = generator
        fn = self.array_fn if arrays else self.fn
        if self.base == "required":
            return fn(base, models, **kwargs)
        return fn(models, **kwargs)

    def arguments(self, params: dict[str, Any], count: int) -> dict[str, Any]:
        """Keyword arguments of the function, per-model scalars broadcast to ``count`` models."""
        return {
            p.arg: _broadcast(params[p.name], p, count) for p in self.params if p.name in params
        }

    def accepts_arrays(self, params: dict[str, Any], count: int) -> bool:
        """Whether the array kernel gives exactly the torch result for these parameter values."""
        return self.array_fn is not None and bool(
            self.array_accepts(**self.arguments(params, count))
        )


def _broadcast(value: Any, param: ParamSpec, count: int) -> Any:
    """A scalar given for a per-model parameter applies to every model."""
    if param.per_model and not isinstance(value, (list, tuple)):
        return [value] * count
    return value


_METHODS: dict[str, MethodSpec] = {}
_BUILTIN: dict[str, str] = {}  # method name -> module that registers it on import


def declare_builtin(module: str, *names: str) -> None:
    """Say that importing ``module`` registers ``names``; it is imported on first use."""
    for name in names:
        _BUILTIN[name] = module


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
        if name in _METHODS or _BUILTIN.get(name, fn.__module__) != fn.__module__:
            raise ValueError(f"merge method {name!r} is already registered")
        _METHODS[name] = _spec_from_function(name, fn, base, min_models, max_models, elementwise)
        return fn

    return decorate


def array_kernel(
    name: str, *, accepts: Callable[..., bool] = lambda **_: True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the numpy float32 kernel of method ``name`` (registered just before).

    The kernel takes the same arguments as the method; ``accepts(**kwargs)`` says for
    which parameter values it reproduces the torch function bit for bit (say, only
    where no fused multiply-add is involved). Its recipe parameters must match.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        spec = _METHODS[name]
        if _spec_from_function(name, fn, spec.base, 1, None, False).params != spec.params:
            raise ValueError(f"array kernel of {name!r} must take the method's parameters")
        _METHODS[name] = dataclasses.replace(spec, array_fn=fn, array_accepts=accepts)
        return fn

    return decorate


def _keyword_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Type hints of the keyword-only parameters alone: the tensor annotations may name
    torch, which a method module imports only for type checking."""
    keywords = [
        a.name
        for a in inspect.signature(fn).parameters.values()
        if a.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    wanted = {k: v for k, v in inspect.get_annotations(fn).items() if k in keywords}
    holder = type("Hints", (), {"__annotations__": wanted})
    return get_type_hints(holder, globalns=fn.__globals__, include_extras=True)


def _spec_from_function(name, fn, base, min_models, max_models, elementwise) -> MethodSpec:
    hints = _keyword_hints(fn)
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
        params.append(
            ParamSpec(
                name=arg.name.rstrip("_"),
                arg=arg.name,
                per_model=per_model,
                kind=kind,
                default=default,
            )
        )
    summary = (inspect.getdoc(fn) or "").split("\n")[0]
    return MethodSpec(
        name=name,
        fn=fn,
        base=base,
        params=tuple(params),
        random=random,
        min_models=min_models,
        max_models=max_models,
        elementwise=elementwise,
        summary=summary,
    )


def get_method(name: str) -> MethodSpec:
    """The native method called ``name``; unknown names list the known ones."""
    if name not in _METHODS and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown merge method {name!r}; native: {', '.join(native_methods())}"
        ) from None


def native_methods() -> list[str]:
    """Names of every natively implemented method, sorted (imports none of them)."""
    return sorted(set(_METHODS) | set(_BUILTIN))


def unregister(name: str) -> None:
    """Remove a method (for tests that register throwaway methods)."""
    _METHODS.pop(name, None)
