"""The train stage's checks before any work starts: the base model, the precision, and a
`metric` that trials compute on their selection sets."""

from __future__ import annotations

from pathlib import Path

from engine.evaluate.sets import set_problems, sweep_sets
from sweeps import Sweep


def model_problems(sweep: Sweep) -> list[str]:
    """A local model path that is not a folder (a hub name is left to the hub)."""
    path = sweep.model.path
    if path is None or Path(path).is_dir():
        return []
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        return [f"model.path: no such model folder: {path}"]
    return []


def precision_problems(sweep: Sweep) -> list[str]:
    """fp16 asked for without a GPU."""
    precision = sweep.train.precision
    values = precision.values() if hasattr(precision, "values") else [precision]
    if "fp16" in values and sweep.resources.gpus_per_trial == 0:
        return [
            "train.precision: fp16 needs a GPU (set resources.gpus_per_trial); on CPU use "
            "fp32 or bf16"
        ]
    return []


def metric_problems(sweep: Sweep) -> list[str]:
    """An evaluation metric as `metric` needs every task's selection set (an `eval` file) with
    the fields the metric reads."""
    if not sweep.metric_is_evaluated():
        return []
    selection = {s.name: s for s in sweep_sets(sweep) if s.split == "selection"}
    missing = [task for task in sweep.task_names() if task not in selection]
    if missing:
        return [
            f"metric: {sweep.metric} is computed on each task's selection set, and task(s) "
            f"{', '.join(missing)} have no `eval` file; give one, or rank trials by eval_loss"
        ]
    sets = [selection[t].model_copy(update={"metrics": [sweep.metric]}) for t in sweep.task_names()]
    return [p for s in sets for p in set_problems(s, "metric")]
