"""The merge stage's checks before any work starts: each task merge's method and parameters,
parsed as the merge recipe it will run (the plans themselves: `sweeps.plans.check_plans`)."""

from __future__ import annotations

from engine.merge.planner import task_merge_recipe
from merging.errors import RecipeError
from merging.recipe import parse_recipe
from sweeps import Sweep


def task_merge_problems(sweep: Sweep) -> list[str]:
    """Each task_merge plan's method and parameters, checked as the recipe it will run."""
    problems = []
    models = [f"/{task}" for task in sweep.task_names()]
    for index, plan in enumerate(sweep.merge):
        if plan.type != "task_merge":
            continue
        for parameters in plan.grid():
            try:
                parse_recipe(task_merge_recipe(plan.method, parameters, "/base", models))
            except RecipeError as err:
                problems += [f"merge[{index}]: {problem}" for problem in err.problems]
                break
    return problems
