"""Generate the sweep reference (`docs/sweeps.md`) from the config models.

    python -m sweeps.reference > docs/sweeps.md

A test regenerates it and compares, so the reference cannot drift from the code.
"""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from sweeps.config import Sweep
from sweeps.space import Space

INTRO = """# Sweep reference

Generated from the config models by `python -m sweeps.reference`; do not edit by hand.

A sweep file is YAML (or a Python file that defines `sweep = Sweep(...)`). Unknown keys are
errors. Relative paths are taken from the sweep file's folder.

Fields marked *searchable* take a value or a search space:

| space | YAML | Python | meaning |
|---|---|---|---|
| grid | `{grid: [a, b]}` | `grid([a, b])` | every value is tried |
| choice | `{choice: [a, b]}` | `choice([a, b])` | one value drawn per sample |
| uniform | `{uniform: [lo, hi]}` | `uniform(lo, hi)` | float, uniform in [lo, hi] |
| loguniform | `{loguniform: [lo, hi]}` | `loguniform(lo, hi)` | float, uniform in log space |
| randint | `{randint: [lo, hi]}` | `randint(lo, hi)` | integer in [lo, hi], both included |

Numbers take grid, choice, uniform and loguniform; integers take grid, choice and randint;
categorical fields take grid and choice. The trial count is the product of the grid sizes, the
tasks, the data sizes and the seeds, times `num_samples`.

Seeds are replicates: the sampled spaces (choice, uniform, loguniform, randint) are drawn once
before training, for each grid point and each of `num_samples`, from a generator seeded by
`data.seed`, and each configuration so drawn is trained unchanged on every task, data size and
seed. A soup across seeds therefore always finds its group, and the same sweep draws the same
values again on resume.
"""


def render() -> str:
    parts = [INTRO]
    for title, model in _models(Sweep, "Sweep (top level)"):
        parts.append(_section(title, model))
    return "\n".join(parts)


def _models(model: type[BaseModel], title: str):
    yield title, model
    for name, field in model.model_fields.items():
        sub = _submodel(_unoptional(field.annotation))
        if sub is not None:
            yield from _models(sub, f"`{_prefix(title)}{name}`")
        for suffix, item in _items(field.annotation):
            yield from _models(item, f"`{_prefix(title)}{name}{suffix}")


def _items(annotation):
    """Models inside a container field: `tasks.<name>` of a dict, `merge[]` of a list, and
    `scheduler` of a union chosen by `type` (one per `type`)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if _is_union(annotation) and len(args) == 1:
        return _items(args[0])
    origin = typing.get_origin(annotation)
    if origin is dict and _submodel(args[1]):
        return [(".<name>`", args[1])]
    if origin is list and args:
        return _variants(args[0], "[]`")
    if origin is typing.Annotated or _by_type(annotation):
        return _variants(annotation, "`")
    return []


def _by_type(annotation) -> bool:
    """A union of sections told apart by their `type` (`scheduler`)."""
    args = typing.get_args(annotation) if _is_union(annotation) else ()
    return len(args) > 1 and all(_submodel(a) and "type" in a.model_fields for a in args)


def _variants(annotation, suffix: str):
    """The models of a field (or list item) that is one model or a union of them by `type`."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    models = [m for m in typing.get_args(annotation) or (annotation,) if _submodel(m)]
    return [
        (
            f"{suffix} with type {_type(m.model_fields['type'].annotation)}"
            if "type" in m.model_fields
            else suffix,
            m,
        )
        for m in models
    ]


def _prefix(title: str) -> str:
    return "" if title.startswith("Sweep") else title.strip("`") + "."


def _unoptional(annotation):
    """`X` of an `X | None` field (an optional section); anything else unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if _is_union(annotation) and len(args) == 1 else annotation


def _submodel(annotation) -> type[BaseModel] | None:
    if (
        isinstance(annotation, type)
        and issubclass(annotation, BaseModel)
        and not issubclass(annotation, Space)
    ):
        return annotation
    return None


def _section(title: str, model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip().splitlines()[0]
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        rows.append(
            f"| `{name}` | {_type(field.annotation)} | {_default(field)} | "
            f"{(field.description or '').replace('|', '/')} |"
        )
    return f"## {title}\n\n{doc}\n\n" + "\n".join(rows) + "\n"


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default is PydanticUndefined:
        made = field.default_factory()
        return "(section)" if isinstance(made, BaseModel) else f"`{made}`"
    return f"`{field.default}`" if field.default is not None else "`null`"


def _type(annotation) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    inner = [typing.get_args(a)[0] for a in args if typing.get_origin(a) is typing.Annotated]
    spaces = [a for a in inner if isinstance(a, type) and issubclass(a, Space)]
    if spaces:
        value = _type(inner[0])
        return f"{value}, searchable ({', '.join(s.key for s in spaces)})"
    if typing.get_origin(annotation) is typing.Annotated:
        return _type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return " / ".join(f"`{a}`" for a in typing.get_args(annotation))
    if _submodel(annotation):
        return "section"
    if _by_type(annotation):
        return "section, by `type`"
    if args and _is_union(annotation):
        return " or ".join(_type(a) for a in args)
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def _is_union(annotation) -> bool:
    """`Union[a, b]` and `Optional[a]`, or `a | b` and `a | None`."""
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
