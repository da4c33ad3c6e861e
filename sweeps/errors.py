"""User-facing errors for sweep definitions: every message names the field path."""

from __future__ import annotations

from pydantic import ValidationError

from sweeps.space import TAG_MARK


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


def _describe(error: dict) -> str:
    kind, msg, given = error["type"], error["msg"], error.get("input")
    if kind == "extra_forbidden":
        return "unknown key (check its spelling; see `raysoup validate --help` and docs/sweeps.md)"
    if kind == "missing":
        return "required field is missing"
    msg = msg.removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error") and not isinstance(given, (dict, list)):
        msg += f" (given: {given!r})"
    return msg


def format_validation_error(err: ValidationError, source: str = "sweep") -> SweepError:
    """One readable line per problem, each starting with the field path."""
    lines = [f"{source}: {len(err.errors())} problem(s)"]
    for error in err.errors():
        lines.append(f"  {field_path(error['loc'])}: {_describe(error)}")
    return SweepError("\n".join(lines))
