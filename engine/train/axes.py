"""A trial's place in the sweep: its configuration, task, data size and seed, and its name.

Each trial is one *cell* of the sweep's grid: `config` (one of `sweeps.trials.configurations`,
drawn before training), `task`, `data_size` (a count or a fraction, as the sweep says) and
`seed`. Tune's config of a trial holds its cell under `trial`. Everything that names or groups
trials reads them through `identify`, so a trial has one name everywhere (terminal, tables,
merges, evaluations), whether it finished or failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.train import records
from sweeps import Sweep
from sweeps.trials import configurations, trial_name

Sizes = dict[str, dict[str, int]]  # task -> data-size value (as text) -> exact example count


@dataclass(frozen=True)
class TrialIdentity:
    """Who a trial is: its name, task, seed, exact data size and searched values."""

    name: str
    task: str
    seed: int
    data_size: int | None
    values: dict[str, Any]
    point: str | None = None  # the point a learning searcher suggested (`p3`)


def cells(sweep: Sweep) -> list[dict]:
    """Every trial of the sweep as its cell: each drawn configuration on every task, data size
    and seed."""
    drawn = [{"label": c.label, "values": c.values} for c in configurations(sweep)]
    return [
        {"config": config, "task": task, "data_size": size, "seed": seed}
        for config in drawn
        for task in sweep.task_names()
        for size in sweep.data_scale or [None]
        for seed in sweep.seeds
    ]


def in_start_order(sweep: Sweep, found: list[dict]) -> list[dict]:
    """`found` (cells in the order of `cells`) in the order their trials start: as given, or
    with `search.order: shuffled` each configuration's cells together at a place drawn from
    `search.order_seed` (the same order again on resume)."""
    if getattr(sweep.search, "order", "given") == "given":
        return found
    groups: dict[str, list[dict]] = {}
    for cell in found:
        groups.setdefault(cell["config"]["label"], []).append(cell)
    labels = list(groups)
    drawn = np.random.default_rng(sweep.search.order_seed).permutation(len(labels))
    return [cell for i in drawn for cell in groups[labels[i]]]


def identify(sweep: Sweep, cell: dict, sizes: Sizes) -> TrialIdentity:
    """The identity of the trial of `cell`; `sizes` turns its data-size value into the task's
    exact example count."""
    task, size = cell["task"], cell["data_size"]
    count = None if size is None else sizes[task][str(size)]
    name = trial_name(sweep, task, cell["config"]["label"], count, cell["seed"])
    values, point = dict(cell["config"]["values"]), cell["config"].get("point")
    return TrialIdentity(name, task, cell["seed"], count, values, point)


def identities(sweep: Sweep, sizes: Sizes, tune_dir: Path | None = None) -> list[TrialIdentity]:
    """Every trial of the sweep, in the order of `cells`; with a learning searcher, every
    trial it started so far (the cells its trials recorded in `tune_dir`, which it needs)."""
    learns = sweep.search.learns() and tune_dir is not None
    found = records.recorded_cells(tune_dir) if learns else cells(sweep)
    return [identify(sweep, cell, sizes) for cell in found]
