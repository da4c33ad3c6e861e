"""Read a sweep definition from YAML or from a Python file that defines `sweep = Sweep(...)`."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sweeps.config import Sweep
from sweeps.errors import SweepError, format_validation_error


def load_sweep(path: str | Path) -> Sweep:
    """Load and validate a sweep file; relative data paths are taken from the file's folder.

    Raises `SweepError` with one line per problem, each naming the field path.
    """
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep file")
    if path.suffix == ".py":
        sweep = _from_python(path)
    elif path.suffix in (".yaml", ".yml"):
        sweep = parse_sweep(_read_yaml(path), source=str(path))
    else:
        raise SweepError(f"{path}: a sweep file is .yaml, .yml or .py, not '{path.suffix}'")
    try:
        return sweep.resolve_paths(path.resolve().parent)
    except ValueError as err:
        raise SweepError(f"{path}: {err}") from None


def parse_sweep(data: Any, source: str = "sweep") -> Sweep:
    """Validate a mapping (parsed YAML or JSON) as a `Sweep`."""
    if not isinstance(data, dict):
        raise SweepError(f"{source}: expected a mapping of sweep fields, got {type(data).__name__}")
    try:
        return Sweep.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(err, source, Sweep) from None


def dump_sweep(sweep: Sweep) -> str:
    """The sweep as YAML; loading it again gives the same sweep."""
    return yaml.safe_dump(sweep.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        problem = getattr(err, "problem", None) or str(err)
        raise SweepError(f"{path}: YAML syntax error at {where}: {problem}") from None


def _from_python(path: Path) -> Sweep:
    try:
        namespace = runpy.run_path(str(path))
    except ValidationError as err:
        raise format_validation_error(err, str(path), Sweep) from None
    sweep = namespace.get("sweep")
    if isinstance(sweep, dict):
        return parse_sweep(sweep, str(path))
    if not isinstance(sweep, Sweep):
        raise SweepError(
            f"{path}: the file must define `sweep = Sweep(...)` (found "
            f"{type(sweep).__name__ if sweep is not None else 'no `sweep`'})"
        )
    return sweep
