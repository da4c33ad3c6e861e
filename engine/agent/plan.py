"""What a W&B sweep file that runs a script of yours will run, checked before Ray starts: its
configurations (`grid`, `random`) or the spaces a searcher draws from (`bayes`), and the
command line of a configuration. No Ray here: `raysoup validate` uses it.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.agent import command
from sweeps.errors import SweepError
from sweeps.load import script_sweep_data
from sweeps.wandb_params import Categorical, Constant, Distribution
from sweeps.wandb_sweeps import (
    MODES,
    WandbSweep,
    grid,
    leaves,
    location,
    parse_wandb_sweep,
    sample,
)

OPTUNA_CHOICES = (str, int, float, bool, type(None))  # what Optuna's categorical takes


@dataclass(frozen=True)
class ScriptSweep:
    """A W&B sweep file with `program` or `command`, read and checked."""

    path: Path
    data: dict  # as written
    parsed: WandbSweep

    @property
    def name(self) -> str:
        """The experiment's name: the file's `name`, else its stem."""
        return self.parsed.name or self.path.stem

    @property
    def cwd(self) -> Path:
        """Where the script runs: the sweep file's folder (as `wandb agent` run from there)."""
        return self.path.resolve().parent

    @property
    def paths(self) -> tuple[command.KeyPath, ...]:
        return tuple(path for path, _ in leaves(self.parsed.parameters))

    @property
    def mode(self) -> str | None:
        metric = self.parsed.metric
        return MODES[metric.goal] if metric is not None else None


def load(path: str | Path) -> ScriptSweep:
    """Read and check a W&B sweep file that runs a script; a `SweepError` names each problem."""
    path = Path(path)
    data = script_sweep_data(path)
    if data is None:
        raise SweepError(f"{path}: not a W&B sweep file with `program` or `command`")
    sweep = ScriptSweep(path, data, parse_wandb_sweep(data, str(path)))
    problems = _problems(sweep)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise SweepError(f"{path}: {len(problems)} problem(s) running its script\n{lines}")
    first_argv(sweep)  # unknown macros, unset variables, a missing program
    return sweep


def _problems(sweep: ScriptSweep) -> list[str]:
    parsed, problems = sweep.parsed, []
    if parsed.method != "grid" and parsed.run_cap is None:
        problems.append(
            f"run_cap: method {parsed.method} draws until stopped in W&B; raysoup runs run_cap "
            "configurations: give run_cap"
        )
    if parsed.early_terminate is not None and not parsed.early_terminate.strict:
        problems.append(
            "early_terminate.strict: false is not supported: ASHA compares a trial's metric "
            "at the rung, as W&B's strict (the default) does; remove it"
        )
    if parsed.method == "bayes":
        for path, parameter in leaves(parsed.parameters):
            problem = searchable(parameter)
            if problem:
                problems.append(f"{location(path)}: {problem}")
    return problems


def searchable(parameter: Distribution) -> str | None:
    """Why Optuna cannot search a parameter under method bayes (None: it can)."""
    if isinstance(parameter, Constant):
        return None
    try:
        parameter.space()
    except ValueError as err:
        return f"method bayes: {err}"
    if isinstance(parameter, Categorical):
        odd = [v for v in parameter.values if not isinstance(v, OPTUNA_CHOICES)]
        if odd:
            return (
                f"method bayes: Optuna chooses among numbers, text, booleans and null, not "
                f"{odd[0]!r}"
            )
    return None


def configurations(sweep: ScriptSweep, seed: int = 0) -> list[dict] | None:
    """The configurations to run, in order: W&B's grid (the first run_cap of them) or run_cap
    draws of W&B's random search from a numpy Generator seeded with `seed`; None for bayes
    (its searcher suggests each one)."""
    parsed = sweep.parsed
    if parsed.method == "grid":
        points = grid(parsed)
        return points[: parsed.run_cap] if parsed.run_cap is not None else points
    if parsed.method == "random":
        rng = np.random.default_rng(seed)
        return [sample(parsed, rng) for _ in range(parsed.run_cap)]
    return None


def trial_count(sweep: ScriptSweep) -> int:
    """How many trials run (at most: the metric's target may end the sweep sooner)."""
    parsed = sweep.parsed
    if parsed.method == "grid":
        count = len(grid(parsed))
        return min(count, parsed.run_cap) if parsed.run_cap is not None else count
    return parsed.run_cap


def first_argv(sweep: ScriptSweep) -> list[str]:
    """The command line of the first configuration (for bayes, of a random draw), with a
    placeholder for the trial's JSON file; a `SweepError` for a macro that cannot be filled or
    a program that is not there."""
    parsed = sweep.parsed
    config = (configurations(sweep) or [sample(parsed, np.random.default_rng(0))])[0]
    args = command.wandb_args(sweep.paths, config)
    if "${program}" in command.command_items(parsed.command, os.environ) and parsed.program:
        script = sweep.cwd / parsed.program
        if not script.is_file():
            raise SweepError(f"{sweep.path}: program: no file {script} (it runs in its folder)")
    json_file = "<trial>/wandb/sweep-<id>/config-<run id>.json"
    try:
        return command.argv(
            parsed.command, parsed.program, args, os.environ, sys.executable, json_file
        )
    except SweepError as err:
        raise SweepError(f"{sweep.path}: {err}") from None


def describe(sweep: ScriptSweep) -> str:
    """What `raysoup run` would run, in a few lines."""
    parsed = sweep.parsed
    how = {
        "grid": "W&B's grid",
        "random": "W&B's random search (seed 0 unless --seed)",
        "bayes": "Optuna's TPE searcher (W&B's bayes is a Gaussian process)",
    }[parsed.method]
    metric = parsed.metric
    lines = [
        f"W&B sweep '{sweep.name}' running a script: {trial_count(sweep)} configuration(s) "
        f"from {how}, each a Ray Tune trial in {sweep.cwd}",
        f"metric: {metric.name} ({metric.goal})" if metric else "metric: none (no ranking)",
        f"first command: {shlex.join(first_argv(sweep))}",
    ]
    return "\n".join(lines)
