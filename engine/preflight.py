"""Checks that need the user's files, run before any work starts (no Ray, no torch).

Each stage owns the checks of its own inputs (`engine/<stage>/checks.py`); this module runs them
in order and reports every problem at once, each named by its field.
"""

from __future__ import annotations

from engine.evaluate.checks import evaluate_problems
from engine.merge.checks import task_merge_problems
from engine.prepare.checks import data_problems, size_problems
from engine.train.checks import model_problems, precision_problems
from sweeps import Sweep, SweepError
from sweeps.plans import check_plans


def check(sweep: Sweep) -> None:
    """Raise `SweepError` naming the field for every problem found in files and settings."""
    problems = data_problems(sweep) + model_problems(sweep) + precision_problems(sweep)
    problems += check_plans(sweep)
    if not problems:
        # These read the files found above, so they run only once those are sound.
        problems += size_problems(sweep) + task_merge_problems(sweep) + evaluate_problems(sweep)
    if problems:
        raise SweepError("sweep: " + f"{len(problems)} problem(s)\n  " + "\n  ".join(problems))
