"""Checks that need the user's files, run before any work starts (no Ray, no torch)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from sweeps import Sweep, SweepError
from sweeps.plans import check_plans


def _where(sweep: Sweep, task: str) -> str:
    """The field path of a task's files: `data` alone, or `tasks.<name>`."""
    return f"tasks.{task}" if sweep.tasks else "data"


def check(sweep: Sweep) -> None:
    """Raise `SweepError` naming the field for every problem found in files and settings."""
    problems = []
    for task in sweep.task_names():
        data = sweep.task_data(task)
        for field in ("train", "eval", "test"):
            path = getattr(data, field)
            if path is not None:
                problems += _check_file(f"{_where(sweep, task)}.{field}", path, data.fields(),
                                        data.on_bad_line)
    problems += _check_targets(sweep)
    problems += _check_model(sweep)
    problems += _check_precision(sweep)
    problems += check_plans(sweep)
    if not problems:
        problems += [p for task in sweep.task_names() for p in _check_sizes(sweep, task)]
        problems += _check_task_merges(sweep) + _check_evaluate(sweep)
    if problems:
        raise SweepError("sweep: " + f"{len(problems)} problem(s)\n  " + "\n  ".join(problems))


def _check_file(name: str, path: str, fields: list[str], on_bad_line: str) -> list[str]:
    if "://" in path:
        return []
    if not Path(path).is_file():
        return [f"{name}: no such file: {path}"]
    try:
        found = source_fields(path)
    except (ValueError, OSError) as err:
        return [f"{name}: cannot read {path}: {err}"]
    missing = [f for f in fields if f not in found]
    if missing:
        return [f"{name}: {path} has no field {missing[0]!r}; its fields: {', '.join(found)}"]
    bad = scan_jsonl(path, fields) if path.endswith(".jsonl") else BadLines()
    if bad.count and on_bad_line == "error":
        return [f"{name}: {path} line {bad.first_line}: {bad.first_reason} ({bad.count} bad "
                "line(s) in all); fix the file, or set data.on_bad_line: skip to drop them"]
    return []


def _check_targets(sweep: Sweep) -> list[str]:
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
        problems += _check_file(name, target, fields, sweep.data.on_bad_line)
    return problems


@dataclass
class BadLines:
    """Malformed lines of a JSONL file: how many, and the first one."""

    count: int = 0
    first_line: int = 0
    first_reason: str = ""


def scan_jsonl(path: str, fields: list[str]) -> BadLines:
    """Every line that is not a JSON object with `fields` (blank lines are allowed)."""
    bad = BadLines()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            reason = line_problem(line, fields)
            if reason:
                bad.count += 1
                if bad.count == 1:
                    bad.first_line, bad.first_reason = number, reason
    return bad


def line_problem(line: str, fields: list[str]) -> str:
    """Why a JSONL line is not a usable record ('' when it is, or is blank)."""
    if not line.strip():
        return ""
    try:
        record = json.loads(line)
    except ValueError as err:
        return f"not valid JSON ({err})"
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [f for f in fields if record.get(f) is None]
    return f"has no field {missing[0]!r} (or it is null)" if missing else ""


def source_fields(path: str) -> list[str]:
    """The field names of a data file, from its first record or its schema."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    with open(path, newline="") as handle:
        if path.endswith(".csv"):
            return next(csv.reader(handle), [])
        if path.endswith(".json"):
            first = json.load(handle)
            first = first[0] if isinstance(first, list) and first else first
        else:
            line = next((line for line in handle if line.strip()), "{}")
            first = json.loads(line)
    if not isinstance(first, dict):
        raise ValueError("records must be JSON objects")
    return list(first)


def count_rows(path: str) -> int:
    """Rows in a data file, cheaply (Parquet metadata, or a line count)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if path.endswith(".json"):
        return len(json.loads(Path(path).read_text()))
    with open(path, "rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines - 1 if path.endswith(".csv") else lines


def _check_task_merges(sweep: Sweep) -> list[str]:
    """Each task_merge plan's method and parameters, checked as the recipe it will run."""
    problems = []
    for index, plan in enumerate(sweep.merge):
        if plan.type != "task_merge":
            continue
        from pydantic import ValidationError

        from engine.planner import task_merge_recipe
        from merging.recipe import parse_recipe

        models = [f"/{task}" for task in sweep.task_names()]
        for parameters in plan.grid():
            try:
                parse_recipe(task_merge_recipe(plan.method, parameters, "/base", models))
            except ValidationError as err:
                problems += [f"merge[{index}]: {e['msg'].removeprefix('Value error, ')}"
                             for e in err.errors()]
                break
    return problems


def _check_evaluate(sweep: Sweep) -> list[str]:
    """The sweep's own eval sets, and that some selection set reports `evaluate.rank_by`."""
    from engine.eval_sets import resolve_metrics, set_problems
    from engine.eval_stage import sweep_sets

    problems = []
    for index, eval_set in enumerate(sweep.evaluate.sets):
        problems += set_problems(eval_set, f"evaluate.sets[{index}]")
    sets = sweep_sets(sweep)
    selection = [s for s in sets if s.split == "selection"]
    if sets and not selection:
        problems.append("evaluate: no selection set, so no candidate can be ranked; give each "
                        "task an `eval` file, or add an evaluate set with `split: selection`")
    if problems or not selection:
        return problems
    ranked = [s for s in selection if "://" in s.path
              or sweep.evaluate.rank_by in resolve_metrics(s, source_fields(s.path))]
    if not ranked:
        problems.append(f"evaluate.rank_by: no selection set reports {sweep.evaluate.rank_by!r}; "
                        f"sets: {', '.join(s.name for s in selection)}")
    return problems


def _check_model(sweep: Sweep) -> list[str]:
    path = sweep.model.path
    if path is None or Path(path).is_dir():
        return []
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        return [f"model.path: no such model folder: {path}"]
    return []


def _check_precision(sweep: Sweep) -> list[str]:
    precision = sweep.train.precision
    values = precision.values() if hasattr(precision, "values") else [precision]
    if "fp16" in values and sweep.resources.gpus_per_trial == 0:
        return ["train.precision: fp16 needs a GPU (set resources.gpus_per_trial); on CPU use "
                "fp32 or bf16"]
    return []


def _check_sizes(sweep: Sweep, task: str) -> list[str]:
    counts = [s for s in (sweep.data_scale or []) if isinstance(s, int)]
    data = sweep.task_data(task)
    if not counts or "://" in data.train:
        return []
    rows = count_rows(data.train)
    usable = rows if data.eval else int(rows * (1 - data.eval_fraction))
    if max(counts) > usable:
        held = "" if data.eval else f" (after holding out eval_fraction {data.eval_fraction})"
        return [f"data_scale: {max(counts)} examples asked, but {_where(sweep, task)}.train has "
                f"{rows} rows, about {usable} for training{held}"]
    return []


def data_sizes(sweep: Sweep, train_rows: int, selected: int | None = None) -> list[int] | None:
    """The data-scale axis as exact example counts of the prepared training set (`selected`:
    the rows the selection stages kept, named in the error)."""
    if sweep.data_scale is None:
        return None
    return sorted({resolve_size(value, train_rows, selected) for value in sweep.data_scale})


def resolve_size(value: int | float, train_rows: int, selected: int | None = None) -> int:
    """One data-scale value (a count, or a fraction of the prepared set) as an exact count."""
    size = value if isinstance(value, int) else max(1, round(value * train_rows))
    if size > train_rows:
        kept = f" (selection kept {selected} rows of the training file)" if selected else ""
        raise SweepError(f"data_scale: {size} examples asked, but the prepared training set "
                         f"has {train_rows}{kept}")
    return size
