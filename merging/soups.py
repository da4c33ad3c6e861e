"""Checkpoint averaging and model soups over lists of checkpoint folders.

- ``select_checkpoints``: all, the last ``k``, or every ``n``-th (by training step).
- ``uniform_soup`` / ``average_checkpoints``: the plain average (a ``linear`` merge).
- ``greedy_soup`` (Wortsman et al. 2022): score every ingredient alone, sort them best
  first, and add each in turn, keeping it only if the average with it scores strictly
  better than the soup without it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from merging.api import merge
from merging.errors import MergeError

_STEP = re.compile(r"(\d+)(?!.*\d)")


def checkpoint_step(path: str | Path) -> int | None:
    """The training step in a checkpoint folder name (the last number in it), if any."""
    match = _STEP.search(Path(path).name)
    return int(match[1]) if match else None


def select_checkpoints(
    checkpoints: Sequence[str | Path],
    mode: Literal["all", "last", "every"] = "all",
    *,
    k: int | None = None,
    n: int | None = None,
) -> list[Path]:
    """Pick checkpoints in step order: ``all``, the ``last`` ``k``, or ``every`` ``n``-th.

    ``every`` counts back from the newest, so the final checkpoint is always included.
    Folders whose names carry no step keep the order they were given in.
    """
    paths = [Path(c) for c in checkpoints]
    if all(checkpoint_step(p) is not None for p in paths):
        paths.sort(key=checkpoint_step)
    if mode == "all":
        return paths
    if mode == "last":
        if not k or k < 1:
            raise ValueError(f"k: 'last' needs a positive k; got {k!r}")
        return paths[-k:]
    if mode == "every":
        if not n or n < 1:
            raise ValueError(f"n: 'every' needs a positive n; got {n!r}")
        return paths[::-1][::n][::-1]
    raise ValueError(f"mode: unknown selection {mode!r}; allowed: all, last, every")


def _linear_recipe(models: Sequence[Path], **extra) -> dict:
    entries = [{"model": str(m), "parameters": {"weight": 1.0}} for m in models]
    return {"merge_method": "linear", "models": entries, **extra}


def uniform_soup(
    checkpoints: Sequence[str | Path],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    **recipe_keys,
) -> Path:
    """Average the checkpoints with equal weights into ``out_dir``."""
    if not checkpoints:
        raise MergeError("a soup needs at least one checkpoint")
    return merge(
        _linear_recipe([Path(c) for c in checkpoints], **recipe_keys), out_dir, overwrite=overwrite
    )


average_checkpoints = uniform_soup


@dataclass
class GreedySoup:
    """The greedy soup's folder, the ingredients it kept, and every score it saw."""

    path: Path
    ingredients: list[Path]
    score: float
    individual: dict[Path, float] = field(default_factory=dict)
    tried: list[tuple[Path, float, bool]] = field(
        default_factory=list
    )  # (candidate, soup score, kept)


def greedy_soup(
    checkpoints: Sequence[str | Path],
    out_dir: str | Path,
    score: Callable[[Path], float],
    *,
    mode: Literal["max", "min"] = "max",
    overwrite: bool = False,
    **recipe_keys,
) -> GreedySoup:
    """Greedy soup: ``score(model_dir)`` is higher-is-better for ``max``, lower for ``min``."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode: {mode!r}; allowed: max, min")
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    paths = [Path(c) for c in checkpoints]
    if not paths:
        raise MergeError("a soup needs at least one checkpoint")
    individual = {p: score(p) for p in paths}
    ranked = sorted(paths, key=individual.get, reverse=mode == "max")
    soup, best = [ranked[0]], individual[ranked[0]]
    tried = []
    parent = Path(out_dir).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)  # the scratch folder lives beside the output
    with tempfile.TemporaryDirectory(prefix="raysoup-greedy-", dir=parent) as scratch:
        for i, candidate in enumerate(ranked[1:]):
            trial = merge(
                _linear_recipe(soup + [candidate], **recipe_keys), Path(scratch) / f"trial-{i}"
            )
            value = score(trial)
            kept = better(value, best)
            tried.append((candidate, value, kept))
            if kept:
                soup, best = soup + [candidate], value
            shutil.rmtree(trial)
    path = merge(_linear_recipe(soup, **recipe_keys), out_dir, overwrite=overwrite)
    return GreedySoup(path, soup, best, individual, tried)
