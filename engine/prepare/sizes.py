"""The data-scale axis as exact example counts of each task's prepared training set."""

from __future__ import annotations

from sweeps import Sweep, SweepError


def task_sizes(sweep: Sweep, manifest: dict) -> dict[str, dict[str, int]]:
    """Each task's exact example count for each data-size value (a count or a fraction)."""
    sizes = {}
    for task in sweep.task_names():
        entry = manifest["tasks"][task]
        rows, selected = entry["train"]["rows"], (entry["selection"] or [{}])[-1].get("rows_out")
        sizes[task] = {str(v): resolve_size(v, rows, selected) for v in sweep.data_scale or []}
    return sizes


def resolve_size(value: int | float, train_rows: int, selected: int | None = None) -> int:
    """One data-scale value (a count, or a fraction of the prepared set) as an exact count."""
    size = value if isinstance(value, int) else max(1, round(value * train_rows))
    if size > train_rows:
        kept = f" (selection kept {selected} rows of the training file)" if selected else ""
        raise SweepError(
            f"data_scale: {size} examples asked, but the prepared training set "
            f"has {train_rows}{kept}"
        )
    return size
