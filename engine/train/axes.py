"""A trial's place in the sweep: its configuration, task, data size and seed, and its name.

Tune gives each trial a config with four axes: `config` (one of `sweeps.trials.configurations`,
drawn before training), `task`, `data_size` (a count or a fraction, as the sweep says) and
`seed`. Everything that names or groups trials reads them through `identify`, so a trial has one
name everywhere (terminal, tables, merges, evaluations), whether it finished or failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sweeps import Sweep
from sweeps.trials import trial_name

AXES = ("config", "task", "data_size", "seed")

Sizes = dict[str, dict[str, int]]  # task -> data-size value (as text) -> exact example count


@dataclass(frozen=True)
class TrialIdentity:
    """Who a trial is: its name, task, seed, exact data size and searched values."""

    name: str
    task: str
    seed: int
    data_size: int | None
    values: dict[str, Any]


def identify(sweep: Sweep, config: dict, sizes: Sizes) -> TrialIdentity:
    """The identity of the trial Tune runs with `config`; `sizes` turns its data-size value
    into the task's exact example count."""
    task, size = config["task"], config["data_size"]
    count = None if size is None else sizes[task][str(size)]
    name = trial_name(sweep, task, config["config"]["label"], count, config["seed"])
    return TrialIdentity(name, task, config["seed"], count, dict(config["config"]["values"]))
