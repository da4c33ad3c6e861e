"""Turning the sweep's merge plans and the trials table into merge jobs (no Ray, no torch).

A job names one candidate: its kind, the trials it is made from (its ingredients), the model
folders it reads and the recipe or soup it runs. Names are stable across runs of the same sweep,
so a resumed sweep finds the merges it already made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from merging.soups import select_checkpoints
from sweeps import Sweep
from sweeps.plans import AXES, plan_names
from sweeps.trials import group_label, searched_columns, value_label, with_result

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class MergeJob:
    """One merge to run: its candidate name, kind, plan, inputs and how to combine them."""

    candidate: str
    kind: str
    plan: str
    ingredients: list[str]
    inputs: list[str]
    method: str = "linear"
    parameters: dict = field(default_factory=dict)
    greedy: bool = False
    tasks: list[str] = field(default_factory=list)
    group: dict = field(default_factory=dict)
    members: int = 1
    skipped: str | None = None

    def describe(self) -> dict:
        """The job as a row of `merges.parquet` (before it runs)."""
        return {
            "candidate": self.candidate,
            "kind": self.kind,
            "plan": self.plan,
            "method": self.method,
            "ingredients": list(self.ingredients),
            "group": json.dumps(self.group, sort_keys=True),
            "parameters": json.dumps(self.parameters, sort_keys=True),
        }


def plan_jobs(sweep: Sweep, trials: pd.DataFrame) -> list[MergeJob]:
    """Every merge job of the sweep's plans, made of the trials that finished. Groups are
    formed from every trial in the table, so a group whose trials failed is a `skipped` job
    rather than no job at all."""
    jobs: list[MergeJob] = []
    for name, plan in zip(plan_names(sweep.merge), sweep.merge):
        chosen = _where(trials, plan.where)
        if plan.type == "checkpoint_average":
            jobs += _checkpoint_averages(name, plan, with_result(chosen), sweep)
        elif plan.type == "soup":
            jobs += _soups(name, plan, chosen, sweep)
        else:
            jobs += _task_merges(name, plan, chosen, sweep)
    return jobs


def _checkpoint_averages(name: str, plan, done: pd.DataFrame, sweep: Sweep) -> list[MergeJob]:
    jobs = []
    for _, row in done.iterrows():
        chosen = [
            str(p)
            for p in select_checkpoints(list(row["checkpoints"]), plan.select, k=plan.k, n=plan.n)
        ]
        skipped = None if len(chosen) > 1 else f"the trial kept {len(chosen)} checkpoint(s)"
        group = {"trial": row["name"]}
        jobs.append(
            MergeJob(
                f"{name}/{group_label(sweep, group)}",
                "checkpoint_average",
                name,
                [row["name"]],
                chosen,
                tasks=[row["task"]],
                group=group,
                skipped=skipped,
            )
        )
    return jobs


def _soups(name: str, plan, trials: pd.DataFrame, sweep: Sweep) -> list[MergeJob]:
    axes = group_axes(sweep)
    across = [] if plan.across == "all" else plan.across
    if set(across) & set(sweep.search_space()):  # a suggested point is one set of values
        across = [*across, "point"]
    keys = [] if plan.across == "all" else [a for a in axes if a not in across]
    jobs = []
    for group, rows in _groups(trials, keys):
        members = with_result(rows)
        best = members.sort_values(
            sweep.metric, ascending=sweep.direction() == "min", kind="stable"
        )
        chosen = best.head(plan.top_k) if plan.top_k else members
        skipped = None if len(chosen) > 1 else f"the group has {len(chosen)} finished trial(s)"
        jobs.append(
            MergeJob(
                f"{name}/{group_label(sweep, group)}",
                "soup",
                name,
                list(chosen["name"]),
                list(chosen["checkpoint"]),
                greedy=plan.method == "greedy",
                tasks=sorted(set(chosen["task"])),
                group=group,
                members=len(members),
                skipped=skipped,
            )
        )
    return jobs


def _task_merges(name: str, plan, trials: pd.DataFrame, sweep: Sweep) -> list[MergeJob]:
    keys = [a for a in group_axes(sweep) if a != "task"]
    tasks = plan.where.get("task", sweep.task_names())
    tasks = tasks if isinstance(tasks, list) else [tasks]
    grid = plan.grid()
    jobs = []
    for group, rows in _groups(trials, keys):
        members = with_result(rows).sort_values("task")
        missing = sorted(set(tasks) - set(members["task"]))
        skipped = f"no finished trial for task(s) {', '.join(missing)}" if missing else None
        for parameters in grid:
            jobs.append(
                MergeJob(
                    "/".join(
                        part
                        for part in (name, group_label(sweep, group), _varying(plan, parameters))
                        if part
                    ),
                    "task_merge",
                    name,
                    list(members["name"]),
                    list(members["checkpoint"]),
                    method=plan.method,
                    parameters=parameters,
                    tasks=list(members["task"]),
                    group=group,
                    members=len(members),
                    skipped=skipped,
                )
            )
    return jobs


def _where(trials: pd.DataFrame, where: dict) -> pd.DataFrame:
    """The trials whose fields hold the plan's `where` values (a list: any of them)."""
    for key, value in where.items():
        trials = trials[trials[key].isin(value if isinstance(value, list) else [value])]
    return trials


def task_merge_recipe(method: str, parameters: dict, base: str, models: list[str]) -> dict:
    """The merge recipe of one task merge: the task models over the base model."""
    return {
        "merge_method": method,
        "base_model": base,
        "parameters": parameters,
        "models": [{"model": path} for path in models],
    }


def group_axes(sweep: Sweep) -> list[str]:
    """The trials-table columns that tell trials apart: the task, size and seed axes, and every
    searched field (after a learning searcher's point)."""
    return [*AXES, *searched_columns(sweep)]


def _groups(trials: pd.DataFrame, keys: list[str]):
    """(group values, member rows) in a stable order; one group of everything without keys."""
    if not keys:
        if not trials.empty:
            yield {}, trials.sort_values("name")
        return
    for values, members in trials.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        yield {k: _plain(v) for k, v in zip(keys, values)}, members.sort_values("name")


def _varying(plan, parameters: dict) -> str:
    """The grid's parameters in a task merge's name (`density=0.5`); '' without a grid."""
    listed = [k for k, v in plan.parameters.items() if isinstance(v, list) and len(v) > 1]
    return "/".join(value_label(k, parameters[k]) for k in listed)


def _plain(value):
    """A numpy scalar as a plain Python value (NaN as None), so groups serialise to JSON."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and value != value else value
