"""The files on this machine that a sweep file names, and how a cluster would see them.

A sweep file's relative paths (data files, evaluation sets, a DeepSpeed JSON file, a model
folder) are taken from the file's folder when it is loaded; on a cluster the file is read
again from wherever the job put it, so a relative path works there only if the file travels
with it. An absolute path that exists here is a file on this machine, which a cluster's nodes
see only when it is on storage they all mount. An absolute path that does not exist here is
taken to be one that exists on the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweeps import Sweep, parse_sweep


@dataclass(frozen=True)
class LocalPath:
    """A path a sweep file names: its field, the value as written, where it is here."""

    field: str
    written: str
    path: Path
    relative: bool  # written relative to the sweep file (or computed by a Python sweep file)


def local_paths(sweep_file: Path, sweep: Sweep) -> list[LocalPath]:
    """The paths `sweep` (loaded from `sweep_file`) names on this machine: every value written
    relative to the file, and every absolute one that exists here.

    A Python sweep file computes its paths when it runs, so the paths it gives are taken as
    relative to its folder when they are inside it (it will compute them again on the cluster).
    """
    sweep_file = Path(sweep_file)
    base = sweep_file.resolve().parent
    loaded = sweep.model_dump(mode="json")
    if sweep_file.suffix == ".py":
        found = []
        for field, value in _leaves(loaded):
            if isinstance(value, str) and Path(value).is_absolute() and Path(value).exists():
                path = Path(value)
                found.append(LocalPath(field, value, path, path.is_relative_to(base)))
        return found
    raw = yaml.safe_load(sweep_file.read_text())
    written = parse_sweep(raw, str(sweep_file)).model_dump(mode="json")
    found = []
    for field, value, now in _pairs(written, loaded):
        if not isinstance(value, str) or not value or "://" in value:
            continue
        path = Path(value)
        if not path.is_absolute() and value != now:  # made absolute on loading: a path
            found.append(LocalPath(field, value, (base / path).resolve(), True))
        elif path.is_absolute() and path.exists():
            found.append(LocalPath(field, value, path, False))
    return found


def _pairs(written: Any, loaded: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(field path, value as written, value as loaded) for every leaf of the written dump."""
    if isinstance(written, dict):
        loaded = loaded if isinstance(loaded, dict) else {}
        for key, value in written.items():
            yield from _pairs(value, loaded.get(key), f"{path}.{key}" if path else key)
    elif isinstance(written, list):
        loaded = loaded if isinstance(loaded, list) and len(loaded) == len(written) else []
        for i, value in enumerate(written):
            yield from _pairs(value, loaded[i] if loaded else None, f"{path}[{i}]")
    else:
        yield path, written, loaded


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    for field, value, _ in _pairs(node, node, path):
        yield field, value
