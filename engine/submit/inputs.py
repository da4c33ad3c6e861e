"""A submitted sweep's input files, copied into its run directory.

A job reads its sweep file and data from a temporary copy of the working directory that the
cluster deletes once the job ends (and names after the copy's content and the cluster's session).
A run directory whose `sweep.yaml` pointed there could not be resumed, and the same sweep
submitted again would look like a different one. So a submitted job first copies every file its
sweep names relative to itself into `<run directory>/inputs/` (the same relative path), and runs
the sweep with those paths: the run directory then holds all it needs to resume, from any
machine that sees it, and a resubmission of the same files is the same sweep.
"""

from __future__ import annotations

import filecmp
import re
import shutil
from pathlib import Path
from typing import Any

from engine.core.rundir import RunDir
from engine.submit.paths import local_paths
from sweeps import Sweep, SweepError

INPUTS = "inputs"
INDEX = re.compile(r"\[(\d+)\]")


def stage_inputs(sweep_file: Path, sweep: Sweep, storage: str | None) -> Sweep:
    """Copy the files `sweep` names relative to `sweep_file` into the run directory's
    `inputs/`, and return the sweep with its paths pointing at the copies.

    A copy already there from an earlier submission is kept when it is the same file; a
    different one raises `SweepError` (the run directory holds a sweep run on other data).
    """
    sweep_file = Path(sweep_file)
    base = sweep_file.resolve().parent
    inputs = RunDir.for_sweep(sweep, storage).root / INPUTS
    data = sweep.model_dump(mode="json", exclude_none=True)
    for found in local_paths(sweep_file, sweep):
        if not found.relative or not found.path.is_relative_to(base):
            continue  # shared storage, or a file the cluster has: read in place
        if not found.path.exists() or isinstance(_get(data, found.field), dict):
            continue  # a missing file is the preflight's to report; a DeepSpeed file inlined
        target = inputs / found.path.relative_to(base)
        _copy(found.path, target, found.field)
        _set(data, found.field, str(target))
    return Sweep.model_validate(data)


def _copy(source: Path, target: Path, field: str) -> None:
    """Copy a file or folder to `target` (through a temporary name), or keep an equal copy."""
    if target.exists():
        if _same(source, target):
            return
        raise SweepError(
            f"{field}: {source} differs from {target}, the copy an earlier submission of this "
            "sweep left in its run directory; rename the sweep or pick another --storage"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")  # a killed copy's leftover
    if partial.is_dir():
        shutil.rmtree(partial)
    partial.unlink(missing_ok=True)
    if source.is_dir():
        shutil.copytree(source, partial)
    else:
        shutil.copy2(source, partial)
    partial.rename(target)


def _same(source: Path, target: Path) -> bool:
    if source.is_dir() != target.is_dir():
        return False
    if not source.is_dir():
        return filecmp.cmp(source, target, shallow=False)
    mine = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file())
    return mine == theirs and all(filecmp.cmp(source / p, target / p, shallow=False) for p in mine)


def _steps(field: str) -> list[str | int]:
    """`tasks.add.train` or `evaluate.sets[0].path` as keys and list indexes."""
    steps: list[str | int] = []
    for part in field.split("."):
        name, *indexes = INDEX.split(part)
        if name:
            steps.append(name)
        steps.extend(int(i) for i in indexes if i)
    return steps


def _get(data: Any, field: str) -> Any:
    for step in _steps(field):
        data = data[step]
    return data


def _set(data: Any, field: str, value: Any) -> None:
    *parents, leaf = _steps(field)
    for step in parents:
        data = data[step]
    data[leaf] = value
