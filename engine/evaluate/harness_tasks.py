"""lm-evaluation-harness tasks on the driver: finding and loading them as `simple_evaluate`
does, what they report, and what stops them from loading (for `raysoup validate`).

Imports lm-eval (about a second, and datasets with it); the checks import it only for an
`lm_eval` set.
"""

from __future__ import annotations

import difflib
import functools
import random
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED
from lm_eval.evaluator_utils import get_sample_size
from lm_eval.tasks import TaskManager

# The loader TaskManager indexes task files with.
from lm_eval.tasks._yaml_loader import load_yaml

from sweeps.evaluation import HarnessSetConfig


def task_manager(include_path: str | None, names: list[str]) -> TaskManager:
    """lm-eval's index of `include_path` alone when it holds every name (indexing lm-eval's
    own tasks takes seconds), else of both."""
    if include_path:
        local = _manager(include_path, False)
        if all(name in local.all_tasks for name in names):
            return local
    return _manager(include_path, True)


@functools.cache
def _manager(include_path: str | None, defaults: bool) -> TaskManager:
    # One index per folder and process: validation and the evaluate stage share it. A task
    # file edited after it was indexed is seen by the next process.
    return TaskManager(include_path=include_path, include_defaults=defaults)


def load(manager: TaskManager, config: HarnessSetConfig) -> dict:
    """The tasks, with `num_fewshot` and the few-shot seed set as `simple_evaluate` sets them
    (a task whose config says 0 keeps 0)."""
    loaded = manager.load(list(config.tasks))
    for task in loaded["tasks"].values():
        if config.num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=config.num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
        _check_greedy(task)
    return loaded


@contextmanager
def seeded():
    """The global seeds `simple_evaluate` sets, for tasks whose documents draw from them; the
    caller's random state comes back afterwards."""
    state = random.getstate(), np.random.get_state()
    random.seed(DEFAULT_RANDOM_SEED)
    np.random.seed(DEFAULT_OTHER_SEED)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])


def _check_greedy(task) -> None:
    kwargs = task.get_config("generation_kwargs") or {}
    if task.get_config("output_type") == "generate_until" and _samples(kwargs):
        raise ValueError(
            f"task {task.config.task!r} samples its generations ({kwargs}); the evaluation "
            "actors decode greedily"
        )


def _samples(kwargs: dict) -> bool:
    return bool(kwargs.get("do_sample")) or float(kwargs.get("temperature") or 0.0) > 0


def metric_names(task) -> list[str]:
    """The metric names a task reports: each metric under each of its filters."""
    filters = [f["name"] for f in task.config.filter_list or []] or ["none"]
    return [m if f == "none" else f"{m},{f}" for f in filters for m in task.aggregation()]


def aggregate_names(group) -> list[str]:
    names = []
    for entry in group.aggregate_metric_list:
        for where in entry.filter_list or ["none"]:
            names.append(entry.metric if where == "none" else f"{entry.metric},{where}")
    return names


def documents(task, limit) -> int:
    size = get_sample_size(task, limit)
    return len(task.eval_docs) if size is None else min(size, len(task.eval_docs))


def task_members(manager: TaskManager, loaded: dict, name: str) -> list[str]:
    """The tasks a listed name stands for: itself, a group's tasks, or a tag's."""
    if name in loaded["tasks"]:
        return [name]
    group = loaded.get("groups", {}).get(name)
    if group is not None:
        return [task.task_name for task in group.get_all_tasks()]
    return sorted(manager.task_index[name].tags)


def expected_sets(loaded: dict, members: dict[str, list[str]], limit) -> dict:
    """The sets a loaded `lm_eval` set reports, by name, each with its metric names and its
    document count: a listed task; a listed group that lm-eval aggregates (its aggregate);
    else each task of a listed group or tag."""
    tasks, groups, out = loaded["tasks"], loaded.get("groups", {}), {}
    for name, names in members.items():
        group = groups.get(name)
        if group is not None and group.aggregate_metric_list:
            out[name] = (aggregate_names(group), sum(documents(tasks[m], limit) for m in names))
            continue
        for member in names:
            out[member] = (metric_names(tasks[member]), documents(tasks[member], limit))
    return out


def check_tasks(config: HarnessSetConfig, where: str) -> tuple[list[str], set[str]]:
    """What stops the set's tasks from loading, each naming the task and its file (a task file
    under `include_path` that does not parse, an unknown name, a task whose dataset cannot be
    loaded, offline a hub dataset that is not in the local cache, a task that samples); and
    the metric names the set reports."""
    folder = config.include_path
    if folder and not Path(folder).is_dir():
        return [f"{where}.include_path: no such folder: {folder}"], set()
    broken = unparsable(Path(folder)) if folder else []
    problems = [
        f"{where}.include_path: {path} (task {task!r}) does not parse: {err}"
        for path, task, err in broken
    ]
    manager, reported = task_manager(folder, config.tasks), set()
    for name in config.tasks:
        if name not in manager.all_tasks:
            problems.append(f"{where}.tasks: {_unknown(name, folder, manager, broken)}")
            continue
        problem, metrics = _load(manager, config, name)
        reported |= metrics
        if problem:
            source = manager.task_index[name].yaml_path or "lm-eval"
            problems.append(f"{where}.tasks: task {name!r} ({source}): {problem}")
    return problems, reported


def unparsable(folder: Path) -> list[tuple[Path, str | None, str]]:
    """Task files under `folder` that lm-eval's index would skip: each with the task name its
    text gives (if any) and the parser's first line."""
    out = []
    for path in sorted(folder.glob("**/*.yaml")):
        try:
            config = load_yaml(path, resolve_func=False, recursive=True)
            if not isinstance(config, dict) or not {"task", "group", "class"} & set(config):
                raise ValueError("no `task`, `group` or `class` key")
        except Exception as err:
            found = re.search(r"^(?:task|group):\s*['\"]?([\w.-]+)", path.read_text(), re.M)
            out.append((path, found and found.group(1), str(err).splitlines()[0]))
    return out


def _unknown(name: str, folder: str | None, manager: TaskManager, broken) -> str:
    where = f"{folder} nor lm-eval's own tasks" if folder else "lm-eval's own tasks"
    message = f"unknown task {name!r}: not in {where}"
    files = [str(path) for path, task, _ in broken if task == name]
    if files:
        return message + f"; its file {files[0]} does not parse (above)"
    close = difflib.get_close_matches(name, manager.all_tasks, n=3)
    return message + (f"; did you mean {', '.join(close)}?" if close else "")


def _load(manager: TaskManager, config: HarnessSetConfig, name: str) -> tuple[str | None, set]:
    """Why the task (with its dataset) does not load, or None; and its metric names."""
    try:
        with seeded():
            loaded = load(manager, config.model_copy(update={"tasks": [name]}))
    except Exception as err:
        return f"does not load: {type(err).__name__}: {str(err).splitlines()[0][:300]}", set()
    if not all(task.eval_docs for task in loaded["tasks"].values()):
        return "its evaluation split has no documents", set()
    found = expected_sets(loaded, {name: task_members(manager, loaded, name)}, config.limit)
    return None, {metric for metrics, _ in found.values() for metric in metrics}
