"""Turning the sweep's merge plans and the trials table into merge jobs (no Ray, no torch).

A job names one candidate: its kind, the trials it is made from (its ingredients), the model
folders it reads and the recipe or soup it runs. Names are stable across runs of the same sweep,
so a resumed sweep finds the merges it already made.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from merging.soups import select_checkpoints
from sweeps import Sweep
from sweeps.plans import AXES, plan_names

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
    """Every merge job of the sweep's plans, over the trials that finished."""
    all_done = trials[trials["status"] == "done"]
    jobs: list[MergeJob] = []
    for name, plan in zip(plan_names(sweep.merge), sweep.merge):
        done = _where(all_done, plan.where)
        if plan.type == "checkpoint_average":
            jobs += _checkpoint_averages(name, plan, done)
        elif plan.type == "soup":
            jobs += _soups(name, plan, done, sweep)
        else:
            jobs += _task_merges(name, plan, done, sweep)
    return jobs


def _checkpoint_averages(name: str, plan, done: pd.DataFrame) -> list[MergeJob]:
    jobs = []
    for _, row in done.iterrows():
        chosen = [
            str(p)
            for p in select_checkpoints(list(row["checkpoints"]), plan.select, k=plan.k, n=plan.n)
        ]
        skipped = None if len(chosen) > 1 else f"the trial kept {len(chosen)} checkpoint(s)"
        jobs.append(
            MergeJob(
                f"{name}-{row['trial_id']}",
                "checkpoint_average",
                name,
                [row["trial_id"]],
                chosen,
                tasks=[row["task"]],
                group={"trial_id": row["trial_id"]},
                skipped=skipped,
            )
        )
    return jobs


def _soups(name: str, plan, done: pd.DataFrame, sweep: Sweep) -> list[MergeJob]:
    axes = group_axes(sweep)
    keys = [] if plan.across == "all" else [a for a in axes if a not in plan.across]
    jobs = []
    for group, members in _groups(done, keys):
        best = members.sort_values(sweep.metric, ascending=sweep.mode == "min", kind="stable")
        chosen = best.head(plan.top_k) if plan.top_k else members
        skipped = None if len(chosen) > 1 else f"the group has {len(chosen)} finished trial(s)"
        jobs.append(
            MergeJob(
                f"{name}-{group_label(group)}",
                "soup",
                name,
                list(chosen["trial_id"]),
                list(chosen["checkpoint"]),
                greedy=plan.method == "greedy",
                tasks=sorted(set(chosen["task"])),
                group=group,
                members=len(members),
                skipped=skipped,
            )
        )
    return jobs


def _task_merges(name: str, plan, done: pd.DataFrame, sweep: Sweep) -> list[MergeJob]:
    keys = [a for a in group_axes(sweep) if a != "task"]
    tasks = plan.where.get("task", sweep.task_names())
    tasks = tasks if isinstance(tasks, list) else [tasks]
    grid = plan.grid()
    jobs = []
    for group, members in _groups(done, keys):
        members = members.sort_values("task")
        missing = sorted(set(tasks) - set(members["task"]))
        skipped = f"no finished trial for task(s) {', '.join(missing)}" if missing else None
        for j, parameters in enumerate(grid, start=1):
            suffix = f"-{j}" if len(grid) > 1 else ""
            jobs.append(
                MergeJob(
                    f"{name}-{group_label(group)}{suffix}",
                    "task_merge",
                    name,
                    list(members["trial_id"]),
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
    searched field."""
    return [*AXES, *sweep.search_space()]


def _groups(done: pd.DataFrame, keys: list[str]):
    """(group values, member rows) in a stable order; one group of everything without keys."""
    if not keys:
        yield {}, done.sort_values("trial_id")
        return
    for values, members in done.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        yield {k: _plain(v) for k, v in zip(keys, values)}, members.sort_values("trial_id")


def group_label(group: dict) -> str:
    """A readable, stable name for a group from its values (`add_lr0.003_s1`); `all` if none.

    Names depend only on the group itself, so a merge planned while other trials still run
    has the name it gets when the sweep is planned whole.
    """
    if not group:
        return "all"
    parts = [_short(k, v) for k, v in group.items() if v is not None]
    label = re.sub(r"[^A-Za-z0-9._=-]+", "", "_".join(parts)) or "all"
    if len(label) > 60:
        digest = hashlib.sha256(json.dumps(group, sort_keys=True).encode()).hexdigest()[:8]
        label = f"{label[:50]}-{digest}"
    return label


def _short(key: str, value) -> str:
    """One value in a label: the task alone, `s0` for a seed, `n500` for a data size, `lr=0.001`
    for a searched field."""
    prefix = {"task": "", "seed": "s", "data_size": "n"}.get(key)
    return f"{prefix}{value}" if prefix is not None else f"{key.rsplit('.', 1)[-1]}={value}"


def _plain(value):
    """A numpy scalar as a plain Python value (NaN as None), so groups serialise to JSON."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and value != value else value
