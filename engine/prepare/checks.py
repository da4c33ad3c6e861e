"""The prepare stage's checks before any work starts: the data files and the selection targets
(no Ray); `inspect` counts what the data gives."""

from __future__ import annotations

from pathlib import Path

from engine.core.files import count_rows, is_empty, missing_field, scan_jsonl, source_fields
from sweeps import Sweep


def data_problems(sweep: Sweep) -> list[str]:
    """Every task's train, eval and test files: they exist, have the format's fields and no
    malformed lines (unless they are skipped); then each selection stage's target sample."""
    problems = []
    for task in sweep.task_names():
        data = sweep.task_data(task)
        for field in ("train", "eval", "test"):
            path = getattr(data, field)
            if path is not None:
                problems += file_problems(
                    f"{where(sweep, task)}.{field}", path, data.fields(), data.on_bad_line
                )
    return problems + _target_problems(sweep)


def where(sweep: Sweep, task: str) -> str:
    """The field path of a task's files: `data` alone, or `tasks.<name>`."""
    return f"tasks.{task}" if sweep.tasks else "data"


def file_problems(name: str, path: str, fields: list[str], on_bad_line: str) -> list[str]:
    """What is wrong with one data file (`name`: its field path in the sweep)."""
    if "://" in path:
        return []
    if not Path(path).is_file():
        return [f"{name}: no such file: {path}"]
    if is_empty(path):
        return [f"{name}: {path}: the file is empty; give a file of examples"]
    try:
        found = source_fields(path)
    except (ValueError, OSError) as err:
        return [f"{name}: cannot read {path}: {err}"]
    problem = missing_field(path, fields, found)
    if problem:
        return [f"{name}: {problem}"]
    bad = scan_jsonl(path, fields) if path.endswith(".jsonl") else None
    if bad and bad.count and on_bad_line == "error":
        return [
            f"{name}: {path} line {bad.first_line}: {bad.first_reason} ({bad.count} bad "
            "line(s) in all); fix the file, or set data.on_bad_line: skip to drop them"
        ]
    return []


def _target_problems(sweep: Sweep) -> list[str]:
    """The target sample of each importance_resample stage exists, has rows and its field."""
    problems = []
    for index, stage in enumerate(sweep.data.select):
        target = getattr(stage, "target", None)
        if target is None or "://" in target:
            continue
        name = f"data.select[{index}].target"
        if Path(target).is_file() and count_rows(target) == 0:
            problems.append(f"{name}: {target} is empty; give a file of target examples")
            continue
        fields = [stage.target_field] if stage.target_field else sweep.data.fields()
        problems += file_problems(name, target, fields, sweep.data.on_bad_line)
    return problems


def task_size_problems(sweep: Sweep, task: str) -> list[str]:
    """Data sizes (counts) that a task's training file cannot give, judged by its row count
    alone (for files too large to select and count before Ray starts)."""
    counts = [s for s in (sweep.data_scale or []) if isinstance(s, int)]
    data = sweep.task_data(task)
    if not counts or "://" in data.train:
        return []
    rows = count_rows(data.train)
    usable = rows if data.eval else int(rows * (1 - data.eval_fraction))
    if max(counts) > usable:
        held = "" if data.eval else f" (after holding out eval_fraction {data.eval_fraction})"
        return [
            f"data_scale: {max(counts)} examples asked, but {where(sweep, task)}.train has "
            f"{rows} rows, about {usable} for training{held}"
        ]
    return []
