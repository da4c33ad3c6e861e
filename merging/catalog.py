"""One view of every method a recipe may name: native ones and mergekit's.

Recipe validation asks the catalog which parameters a method takes, which are per
model, which are required and whether it needs a base, without caring who runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from merging.methods import get_method, native_methods


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
Engine = Literal["native", "mergekit"]


@dataclass(frozen=True)
class MethodInfo:
    """What a recipe needs to know about a method, whoever implements it."""

    name: str
    native: bool
    base: str  # "required", "optional", "ignored" or "forbidden"
    shared: dict[str, Any]  # name -> default, or REQUIRED
    per_model: dict[str, Any]
    max_models: int | None = None

    @property
    def parameters(self) -> list[str]:
        return sorted({**self.shared, **self.per_model})


@cache
def mergekit_methods() -> tuple[str, ...]:
    """Names of every method mergekit 0.1.5 has registered."""
    from mergekit import merge_methods

    return tuple(sorted(m.spec.name for m in merge_methods.registered_methods()))


def known_methods() -> list[str]:
    """Every method a recipe may name (native first-class, the rest through mergekit)."""
    return sorted(set(native_methods()) | set(mergekit_methods()))


def is_known(name: str) -> bool:
    """Whether a recipe may name ``name``; mergekit (which imports torch and transformers,
    seconds of start-up) is asked only about names that are not native."""
    return name in native_methods() or name in mergekit_methods()


def describe(name: str, engine: Engine | None = None) -> MethodInfo:
    """The catalog entry for ``name``; ``engine`` forces one implementation."""
    if not is_known(name):
        raise ValueError(f"unknown method {name!r}; known: {', '.join(known_methods())}")
    if engine != "mergekit" and name in native_methods():
        return _native_info(name)
    if name not in mergekit_methods():
        raise ValueError(
            f"method {name!r} is native only; mergekit has: {', '.join(mergekit_methods())}"
        )
    return _mergekit_info(name)


def _native_info(name: str) -> MethodInfo:
    spec = get_method(name)
    value = lambda p: REQUIRED if p.required else p.default  # noqa: E731
    return MethodInfo(
        name=name,
        native=True,
        base=spec.base,
        shared={p.name: value(p) for p in spec.params if not p.per_model},
        per_model={p.name: value(p) for p in spec.params if p.per_model},
        max_models=spec.max_models,
    )


@cache
def _mergekit_info(name: str) -> MethodInfo:
    from mergekit import merge_methods
    from mergekit.merge_methods.base import ParameterScope

    spec = merge_methods.get(name).spec
    value = lambda p: REQUIRED if p.required else p.default  # noqa: E731
    return MethodInfo(
        name=name,
        native=False,
        base=spec.contract.base.value,
        shared={p.name: value(p) for p in spec.parameters if p.scope == ParameterScope.SHARED},
        per_model={p.name: value(p) for p in spec.parameters if p.scope != ParameterScope.SHARED},
        max_models=spec.contract.max_non_base,
    )
