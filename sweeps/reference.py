"""Generate the sweep reference (`docs/sweeps.md`) from the config models.

    python -m sweeps.reference > docs/sweeps.md

A test regenerates it and compares, so the reference cannot drift from the code.
"""

from __future__ import annotations

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
data sizes and the seeds, times `num_samples`.
"""


def render() -> str:
    parts = [INTRO]
    for title, model in _models(Sweep, "Sweep (top level)"):
        parts.append(_section(title, model))
    return "\n".join(parts)


def _models(model: type[BaseModel], title: str):
    yield title, model
    for name, field in model.model_fields.items():
        sub = _submodel(field.annotation)
        if sub is not None:
            yield from _models(sub, f"`{_prefix(title)}{name}`")
        for item in _list_items(field.annotation):
            kind = typing.get_args(item.model_fields["type"].annotation)[0]
            yield f"`{_prefix(title)}{name}[]` with `type: {kind}`", item


def _list_items(annotation) -> list[type[BaseModel]]:
    """The models a list field may hold (a list of a union of sections, such as `select`)."""
    if typing.get_origin(annotation) is not list:
        return []
    (item,) = typing.get_args(annotation)
    if typing.get_origin(item) is typing.Annotated:
        item = typing.get_args(item)[0]
    return [a for a in typing.get_args(item) if _submodel(a)]


def _prefix(title: str) -> str:
    return "" if title.startswith("Sweep") else title.strip("`") + "."


def _submodel(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
            and not issubclass(annotation, Space):
        return annotation
    return None


def _section(title: str, model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip().splitlines()[0]
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        rows.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | "
                    f"{(field.description or '').replace('|', '/')} |")
    return f"## {title}\n\n{doc}\n\n" + "\n".join(rows) + "\n"


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default is PydanticUndefined:
        return "(section)"
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
    if args and typing.get_origin(annotation) is typing.Union:
        return " or ".join(_type(a) for a in args)
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
