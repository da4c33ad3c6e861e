"""Read a sweep definition from YAML (raysoup's, or a W&B sweep file's) or from a Python file
that defines `sweep = Sweep(...)`."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sweeps.config import Sweep
from sweeps.errors import SweepError, format_validation_error
from sweeps.wandb_sweeps import is_wandb_sweep, to_raysoup

YAML_SUFFIXES = (".yaml", ".yml")


def load_sweep(path: str | Path) -> Sweep:
    """Load and validate a sweep file; relative data paths are taken from the file's folder.

    A W&B sweep file (YAML with top-level `method` and `parameters`) whose parameters name
    raysoup fields is converted first (`sweeps.wandb_sweeps.to_raysoup`, docs/wandb-sweep-files.md).
    Raises `SweepError` with one line per problem, each naming the field path.
    """
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep file")
    if path.suffix == ".py":
        sweep = _from_python(path)
    elif path.suffix in YAML_SUFFIXES:
        sweep = parse_sweep(_read_yaml(path), source=str(path))
    else:
        raise SweepError(f"{path}: a sweep file is .yaml, .yml or .py, not '{path.suffix}'")
    try:
        return sweep.resolve_paths(path.resolve().parent)
    except ValueError as err:
        raise SweepError(f"{path}: {err}") from None


def parse_sweep(data: Any, source: str = "sweep") -> Sweep:
    """Validate a mapping (parsed YAML or JSON) as a `Sweep`; a W&B sweep file's mapping is
    converted first."""
    if not isinstance(data, dict):
        raise SweepError(f"{source}: expected a mapping of sweep fields, got {type(data).__name__}")
    try:
        return Sweep.model_validate(_raysoup_mapping(data, source))
    except ValidationError as err:
        raise format_validation_error(err, source, Sweep) from None


def convert_wandb(path: str | Path, base: str | Path | None = None) -> dict[str, Any]:
    """The raysoup sweep mapping of the W&B sweep file at `path`, written over the mapping of
    the YAML raysoup sweep file `base` as written (its relative paths unchanged), validated.

    Raises `SweepError` naming each problem's key or field path.
    """
    data = _read_yaml_file(path)
    if not is_wandb_sweep(data):
        raise SweepError(f"{path}: not a W&B sweep file (it needs top-level method and parameters)")
    base_data = None if base is None else _read_yaml_file(base)
    if base is not None and (not isinstance(base_data, dict) or is_wandb_sweep(base_data)):
        raise SweepError(f"{base}: the base is a raysoup sweep file, a mapping of its fields")
    converted = to_raysoup(data, base_data, source=str(path))
    parse_sweep(converted, source=f"{path} over {base}" if base is not None else str(path))
    return converted


def dump_sweep(sweep: Sweep) -> str:
    """The sweep as YAML; loading it again gives the same sweep."""
    return yaml.safe_dump(sweep.model_dump(mode="json", exclude_none=True), sort_keys=False)


def runs_script(data: Any) -> bool:
    """Whether a parsed file is a W&B sweep file that runs a script of yours (it has `program`
    or `command`): `raysoup run` runs it as W&B's agent would (`engine/agent/`)."""
    return is_wandb_sweep(data) and ("program" in data or "command" in data)


def script_sweep_data(path: str | Path) -> dict | None:
    """The mapping of the W&B sweep file at `path` when it runs a script of yours; None for any
    other sweep file (a raysoup sweep, a Python file, a W&B file that names raysoup fields)."""
    path = Path(path)
    if path.suffix not in YAML_SUFFIXES or not path.is_file():
        return None
    data = _read_yaml(path)
    return data if runs_script(data) else None


def _raysoup_mapping(data: dict, source: str) -> dict:
    """The raysoup sweep mapping: `data`, or a W&B sweep file's converted (with no base)."""
    if not is_wandb_sweep(data):
        return data
    if runs_script(data):
        raise SweepError(
            f"{source}: a W&B sweep file with `program` or `command` runs a script of yours, "
            "not a raysoup sweep; `raysoup run` and `raysoup validate` run and check it as "
            "W&B's agent would (docs/wandb-sweep-files.md); `raysoup convert wandb` is for "
            "W&B sweep files whose parameters name raysoup fields (train.lr, ...)"
        )
    return to_raysoup(data, base=None, source=source)


def _read_yaml_file(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such file")
    if path.suffix not in YAML_SUFFIXES:
        raise SweepError(f"{path}: expected a YAML file (.yaml or .yml), not '{path.suffix}'")
    return _read_yaml(path)


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
