"""User-facing errors for sweep definitions: every message names the field path."""

from __future__ import annotations

import difflib
import re
import typing

from pydantic import BaseModel, ValidationError

from sweeps.space import TAG_MARK

NAMED = re.compile(r"[a-z_]+(\[\d+\])?(\.[A-Za-z_][\w]*(\[\d+\])?)*: ")


class SweepError(ValueError):
    """A sweep definition that cannot run; the message is meant for the user, not a traceback."""


def field_path(loc: tuple) -> str:
    """`('train', 'lr', '~grid', 'grid', 1)` -> `train.lr.grid[1]` (union tags dropped)."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, str) and item.startswith(TAG_MARK):
            continue
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) or "(top level)"


def describe(error: dict, model: type[BaseModel] | None = None) -> str:
    """What is wrong, in words (an unknown key of `model` with the keys allowed there)."""
    kind, msg, given = error["type"], error["msg"], error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(error["loc"], model)
    if kind == "missing":
        return "required field is missing"
    msg = msg.removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error") and not isinstance(given, (dict, list)):
        msg += f" (given: {given!r})"
    return msg


def format_validation_error(
    err: ValidationError, source: str = "sweep", model: type[BaseModel] | None = None
) -> SweepError:
    """One readable line per problem, each starting with the field path; an unknown key of a
    `model` lists the keys allowed where it stands."""
    lines = [f"{source}: {len(err.errors())} problem(s)"]
    for error in err.errors():
        message = describe(error, model)
        # a model's own check that names its field itself (`branches[1].train.lr: ...`)
        named = not error["loc"] and NAMED.match(message)
        lines.append(f"  {message}" if named else f"  {field_path(error['loc'])}: {message}")
    return SweepError("\n".join(lines))


def _unknown_key(loc: tuple, model: type[BaseModel] | None) -> str:
    allowed = _fields_at(model, loc[:-1]) if model else []
    if not allowed:
        return "unknown key (check its spelling; every field is in docs/sweeps.md)"
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"did you mean `{close[0]}`? " if close else ""
    return f"unknown key; {hint}allowed here: {', '.join(allowed)} (see docs/sweeps.md)"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the model that stands at `loc` inside `model` (best effort: [] when
    the path goes through something that is not one model)."""
    for part in loc:
        if isinstance(part, int) or (isinstance(part, str) and part.startswith(TAG_MARK)):
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            # A discriminated union's tag (`merge[0].soup`): pick the member of that type.
            model = next((m for m in _members(model) if _type_tag(m) == part), model)
            continue
        members = _models_in(fields[part].annotation)
        if len(members) != 1 and not all(_type_tag(m) for m in members):
            return []
        model = members[0] if len(members) == 1 else members
    return list(getattr(model, "model_fields", {})) if isinstance(model, type) else []


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (through Optional, lists, dicts, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _members(model) -> list:
    return model if isinstance(model, list) else []


def _type_tag(model) -> str | None:
    field = getattr(model, "model_fields", {}).get("type")
    args = typing.get_args(field.annotation) if field else ()
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None
