"""The evaluate stage's checks before any work starts: the sweep's own sets, and that some
selection set reports the metric the leaderboard ranks by."""

from __future__ import annotations

from engine.core.files import source_fields
from engine.evaluate.sets import resolve_metrics, set_problems, sweep_sets
from sweeps import Sweep


def evaluate_problems(sweep: Sweep) -> list[str]:
    """The sweep's own eval sets, and that some selection set reports `evaluate.rank_by`."""
    problems = []
    for index, eval_set in enumerate(sweep.evaluate.sets):
        problems += set_problems(eval_set, f"evaluate.sets[{index}]")
    sets = sweep_sets(sweep)
    selection = [s for s in sets if s.split == "selection"]
    if sets and not selection:
        problems.append(
            "evaluate: no selection set, so no candidate can be ranked; give each "
            "task an `eval` file, or add an evaluate set with `split: selection`"
        )
    if problems or not selection:
        return problems
    ranked = [
        s
        for s in selection
        if "://" in s.path or sweep.evaluate.rank_by in resolve_metrics(s, source_fields(s.path))
    ]
    if not ranked:
        problems.append(
            f"evaluate.rank_by: no selection set reports {sweep.evaluate.rank_by!r}; "
            f"sets: {', '.join(s.name for s in selection)}"
        )
    return problems
