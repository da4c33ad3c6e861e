"""Merge plans: the `merge:` section of a sweep, each plan producing merged candidates.

- `checkpoint_average`: per trial, the average of its kept checkpoints (all, last k, every n);
- `soup`: across trials that differ only in the `across` fields (by default the seeds of each
  setting), uniform or greedy (an ingredient stays only if the selection metric improves);
- `task_merge`: across the `task` axis, the task models merged with the base model by a merge
  method, over a small grid of its parameters.

Plans are checked against the sweep before training starts (`check_plans`), so a field that is not
in the sweep or a soup of one trial is refused up front.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import Field, model_validator

from sweeps.base import Strict

PositiveInt = Annotated[int, Field(gt=0)]
Scalar = bool | int | float | str
AXES = ("task", "data_size", "seed")


class _Plan(Strict):
    name: str | None = Field(
        None,
        description="Name of the plan, the first part of its candidates' names (default: "
        "`avg`, `soup` or `merge` by its type, numbered if the type repeats).",
    )
    where: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict,
        description="Use only trials whose fields have these values, for "
        "example `{data_size: 1000}` or `{seed: [0, 1]}` (a list: any of its values).",
    )


class CheckpointAveragePlan(_Plan):
    """Average the checkpoints along each trial (Free Lunch: the average of epoch checkpoints)."""

    type: Literal["checkpoint_average"] = Field(..., description="Plan kind.")
    select: Literal["all", "last", "every"] = Field(
        "all",
        description="Which checkpoints: `all` kept, the `last` k, or `every` n-th counting "
        "back from the final one.",
    )
    k: PositiveInt | None = Field(None, description="How many, for `select: last`.")
    n: PositiveInt | None = Field(None, description="Stride, for `select: every`.")

    @model_validator(mode="after")
    def _needs_count(self):
        if self.select == "last" and self.k is None:
            raise ValueError("`select: last` needs `k` (how many of the last checkpoints)")
        if self.select == "every" and self.n is None:
            raise ValueError("`select: every` needs `n` (the stride)")
        return self


class SoupPlan(_Plan):
    """Average finished trials that differ only in the `across` fields (a model soup)."""

    type: Literal["soup"] = Field(..., description="Plan kind.")
    method: Literal["uniform", "greedy"] = Field(
        "uniform",
        description="`uniform` averages every trial of a group; `greedy` adds trials "
        "best first and keeps each only if the selection metric improves.",
    )
    across: Literal["all"] | list[str] = Field(
        ["seed"],
        description="Fields that vary inside a group (`seed`, `data_size`, `task`, or a "
        "searched field such as `train.lr`); trials equal in every other field form one group. "
        "`all`: the whole sweep is one group.",
    )
    top_k: PositiveInt | None = Field(
        None,
        description="Use only the best k trials of each group by the selection metric "
        "(null: all of them).",
    )


class TaskMergePlan(_Plan):
    """Merge the task models of each setting with the base model, by a merge method."""

    type: Literal["task_merge"] = Field(..., description="Plan kind.")
    method: str = Field(
        "task_arithmetic",
        description="A merge method known to `raysoup merge` "
        "(task_arithmetic, ties, dare_ties, linear, ...).",
    )
    parameters: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict,
        description="Method parameters (weight, density, lambda, ...). A "
        "list is a grid: one merge per combination.",
    )

    def grid(self) -> list[dict[str, Scalar]]:
        """One parameter dict per combination of the listed values."""
        names = list(self.parameters)
        values = [v if isinstance(v, list) else [v] for v in self.parameters.values()]
        return [dict(zip(names, combo)) for combo in itertools.product(*values)]


MergePlan = Annotated[CheckpointAveragePlan | SoupPlan | TaskMergePlan, Field(discriminator="type")]


# The first part of a merge's name when its plan has none: short, since names are read in tables.
SHORT_NAMES = {"checkpoint_average": "avg", "soup": "soup", "task_merge": "merge"}


def plan_names(plans: list) -> list[str]:
    """Each plan's name: its own, or a short name of its type (`avg`, `soup`, `merge`),
    numbered when the type repeats."""
    counts: dict[str, int] = {}
    names = []
    for plan in plans:
        counts[plan.type] = counts.get(plan.type, 0) + 1
        short = SHORT_NAMES[plan.type]
        names.append(
            plan.name or (short if counts[plan.type] == 1 else f"{short}{counts[plan.type]}")
        )
    return names


def axis_sizes(sweep) -> dict[str, int]:
    """How many values each axis of the sweep takes; sampled spaces count as one `sample` axis."""
    sizes = {
        "task": len(sweep.task_names()),
        "seed": len(sweep.seeds),
        "data_size": len(sweep.data_scale or [None]),
    }
    for path, space in sweep.search_space().items():
        values = space.values() if space.key == "grid" else None
        sizes[path] = len(values) if values else 0
    sizes["sample"] = sweep.num_samples
    return sizes


def axis_values(sweep) -> dict[str, list]:
    """The values each grid axis takes (`data_size`: the counts of `data_scale`)."""
    counts = [v for v in sweep.data_scale or [] if isinstance(v, int)]
    # Fractions become counts only once the data is prepared, so they cannot be checked here.
    values = {"task": sweep.task_names(), "seed": list(sweep.seeds), "data_size": counts}
    for path, space in sweep.search_space().items():
        if space.key == "grid":
            values[path] = space.values()
    return values


def _check_where_values(where: dict, values: dict[str, list], at: str) -> list[str]:
    """A `where` value no trial can have would silently select nothing: refuse it."""
    problems = []
    for key, wanted in where.items():
        known = values.get(key)
        if not known:
            continue
        missing = [v for v in (wanted if isinstance(wanted, list) else [wanted]) if v not in known]
        if missing:
            problems.append(
                f"{at}.where.{key}: no trial has {missing[0]!r}; the sweep's values: "
                + ", ".join(map(str, known))
            )
    return problems


def check_plans(sweep) -> list[str]:
    """Problems with the sweep's merge plans, each naming `merge[i]` and the field."""
    problems = []
    sizes = axis_sizes(sweep)
    names = plan_names(sweep.merge)
    if len(set(names)) != len(names):
        problems.append(f"merge: plan names must be distinct, got {names}")
    allowed = [k for k in sizes if k != "sample"]
    for i, plan in enumerate(sweep.merge):
        where = f"merge[{i}]"
        unknown = [f for f in plan.where if f not in allowed]
        if unknown:
            problems.append(
                f"{where}.where: '{unknown[0]}' is not an axis of this sweep; "
                f"allowed: {', '.join(allowed)}"
            )
        problems += _check_where_values(plan.where, axis_values(sweep), where)
        if plan.type == "soup":
            problems += _check_soup(plan, sizes, where)
        elif plan.type == "task_merge" and sizes["task"] < 2:
            problems.append(
                f"{where}: task_merge merges task models with the base model and "
                f"needs a `tasks` section with at least two tasks"
            )
    return problems


def expected_members(plan, sweep) -> int:
    """How many trials one group of `plan` holds once every trial has finished."""
    sizes = axis_sizes(sweep)
    sizes.update({k: len(v) if isinstance(v, list) else 1 for k, v in plan.where.items()})
    if plan.type == "checkpoint_average":
        return 1
    if plan.type == "task_merge":
        return sizes["task"]
    return _group_size(sizes, list(sizes) if plan.across == "all" else plan.across)


def _check_soup(plan: SoupPlan, sizes: dict[str, int], where: str) -> list[str]:
    if plan.across == "all":
        group = _group_size(sizes, [k for k in sizes])
    else:
        allowed = [k for k in sizes if k != "sample"]
        unknown = [f for f in plan.across if f not in allowed]
        if unknown:
            return [
                f"{where}.across: '{unknown[0]}' is not an axis of this sweep; allowed: "
                + ", ".join(allowed)
            ]
        group = _group_size(sizes, plan.across)
    if group < 2:
        return [
            f"{where}: every soup group holds a single trial (the sweep has one value along "
            f"{plan.across}); soup across an axis with several values"
        ]
    return []


def _group_size(sizes: dict[str, int], across: list[str]) -> int:
    """Trials in one group: the product of the sizes of the axes that vary inside it.

    Sampled spaces (size 0 here) vary with the `sample` axis, so varying any of them varies it.
    """
    varying = set(across)
    if any(sizes.get(f) == 0 for f in varying):
        varying.add("sample")
    total = 1
    for axis in varying:
        total *= sizes[axis] if sizes[axis] else 1
    return total
