"""Checks that need the user's files, run before any work starts (no Ray, no torch).

Each stage owns the checks of its own inputs (`engine/<stage>/checks.py`, and the data
inspection of `engine/prepare/inspect.py`); this module runs them in order, refuses the sweep
with every problem at once, each named by its field, and returns the warnings and notes to show.
"""

from __future__ import annotations

from pathlib import Path

from engine.core.findings import Findings
from engine.demo import BASE_DIR
from engine.evaluate.checks import evaluate_problems
from engine.merge.checks import task_merge_problems
from engine.prepare.checks import data_problems
from engine.prepare.inspect import inspect_data
from engine.tracking.checks import tracking_problems
from engine.train.checks import (
    attention_problems,
    deepspeed_problems,
    lora_problems,
    metric_problems,
    model_problems,
    precision_problems,
    qlora_problems,
    storage_findings,
)
from sweeps import Sweep, SweepError
from sweeps.plans import check_plans
from sweeps.scaling import sizes_problem


def check(sweep: Sweep) -> Findings:
    """Raise `SweepError` naming the field for every problem found in files and settings;
    return what to tell the user (row counts, lengths, warnings)."""
    found = Findings(problems=data_problems(sweep) + model_problems(sweep))
    found.problems += precision_problems(sweep) + attention_problems(sweep)
    found.problems += deepspeed_problems(sweep) + qlora_problems(sweep) + check_plans(sweep)
    found.problems += tracking_problems(sweep)
    found += storage_findings(sweep)
    if not found.problems:
        found.problems += lora_problems(sweep)
        # These read the files found above, so they run only once those are sound.
        found += inspect_data(sweep, base_tokenizer(sweep))
        found.problems += task_merge_problems(sweep) + evaluate_problems(sweep)
        found.problems += metric_problems(sweep)
        found.warnings += [p for p in [sizes_problem(sweep)] if p]
    if found.problems:
        problems = found.problems
        raise SweepError("sweep: " + f"{len(problems)} problem(s)\n  " + "\n  ".join(problems))
    return found


def base_tokenizer(sweep: Sweep) -> str | None:
    """A local folder with the base model's tokenizer, or None (a hub name: prepare measures)."""
    if sweep.model.preset is not None:
        return str(BASE_DIR)  # both presets use the demo model's tokenizer
    path = Path(sweep.model.path).expanduser()
    return str(path) if path.is_dir() else None
