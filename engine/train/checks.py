"""The train stage's checks before any work starts: the base model and the precision."""

from __future__ import annotations

from pathlib import Path

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
