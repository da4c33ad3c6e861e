"""Property-based: sweep files and merge recipes made by hypothesis, each a valid one with
random edits (keys set to odd values, keys removed, keys misspelled). Every input is either a
plan raysoup can run (its trials, names, merge plans and Tune cells come out) or one error
whose every line names a field; never a traceback. No Ray, no files but the sweep's own."""

from __future__ import annotations

import copy
import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.train.axes import cells, identify
from merging.errors import RecipeError
from merging.recipe import parse_recipe
from sweeps import SweepError, load_sweep, parse_sweep
from sweeps.plans import check_plans, plan_names
from tests.conftest import DEMO_DATA
from tests.faults.conftest import TALLY

SWEEP = {
    "name": "generated",
    "model": {"preset": "tiny-random"},
    "finetune": {"method": {"grid": ["full", "lora"]}, "lora": {"r": 4}},
    "data": {
        "train": str(DEMO_DATA / "add" / "train.jsonl"),
        "eval": str(DEMO_DATA / "add" / "eval.jsonl"),
        "format": "prompt_completion",
    },
    "train": {"lr": {"loguniform": [1e-4, 1e-2]}, "max_steps": 4, "batch_size": 8},
    "data_scale": [50, 100],
    "seeds": [0, 1],
    "num_samples": 2,
    "checkpoint": {"every": 2, "keep": 2},
    "merge": [
        {"type": "checkpoint_average", "select": "last", "k": 2},
        {"type": "soup", "method": "greedy", "across": ["seed"]},
    ],
    "evaluate": {"rank_by": "accuracy"},
    "resources": {"max_concurrent": 1, "max_failures": 2},
}
RECIPE = {
    "merge_method": "ties",
    "base_model": "/models/base",
    "models": [
        {"model": "/models/a", "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": "/models/b", "parameters": {"weight": 0.5, "density": 0.7}},
    ],
    "parameters": {"normalize": True},
    "dtype": "float32",
    "seed": 3,
}

KEYS = st.sampled_from(["grid", "choice", "uniform", "x", "k"])
WORDS = ["all", "last", "every", "greedy", "uniform", "lora", "full", "ties", "seed"]
ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(min_value=-5, max_value=500), max_size=4),
    st.dictionaries(KEYS, st.integers(), max_size=2),
    st.sampled_from(WORDS),
)


def _paths(value, prefix=()):
    """Every path into nested dicts and lists."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _edit(data, path, action: str, value, name: str):
    """`data` with one edit at `path`: set it, delete it, or add a sibling key `name`."""
    data = copy.deepcopy(data)
    if not path:
        return value if action == "set" else data
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "set":
        parent[last] = value
    elif action == "delete" and isinstance(parent, dict):
        del parent[last]
    elif action == "add" and isinstance(parent, dict):
        parent[name] = value
    return data


@st.composite
def edited(draw, base: dict):
    data = base
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(list(_paths(data))))
        action = draw(st.sampled_from(["set", "set", "delete", "add"]))
        name = draw(st.sampled_from(["lr", "lrr", "seed", "k", "wieght", "density", "type"]))
        data = _edit(data, path, action, draw(ODD), name)
    return data


def names_a_field(message: str) -> bool:
    """Every problem line of a refusal starts with the field path it is about (a refusal of
    the whole file is one line about `sweep`)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) == 1:
        return lines[0].startswith("sweep: ")
    return all(": " in line and not line.startswith(":") for line in lines[1:])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited(SWEEP))
def test_generated_sweeps_are_a_plan_or_an_error_naming_a_field(data):
    try:
        sweep = parse_sweep(data)
    except SweepError as err:
        TALLY.bad_input("generated sweep file")
        assert names_a_field(str(err)), str(err)
        return
    problems = check_plans(sweep)  # the plans against the sweep's axes
    assert all(": " in problem for problem in problems), problems
    names = plan_names(sweep.merge)
    assert len(names) == len(sweep.merge)
    # Exact counts as the prepare stage would give them (a fraction of 1,000 rows).
    counts = {str(s): s if isinstance(s, int) else round(s * 1000) for s in sweep.data_scale or []}
    sizes = {task: counts for task in sweep.task_names()}
    trials = cells(sweep)
    assert len(trials) == sweep.trial_count()
    assert len({identify(sweep, cell, sizes).name for cell in trials}) == len(trials)
    for value in (sweep.train.lr,):
        assert not isinstance(value, float) or math.isfinite(value)


@settings(max_examples=60, deadline=None)
@given(edited(SWEEP))
def test_generated_sweep_files_load_or_name_a_field(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("sweep") / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        load_sweep(path)
    except SweepError as err:
        TALLY.bad_input("generated sweep file (YAML)")
        assert names_a_field(str(err)) or ": " in str(err), str(err)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited(RECIPE))
def test_generated_recipes_are_a_merge_or_an_error_naming_a_field(data):
    try:
        recipe = parse_recipe(data)
    except RecipeError as err:
        TALLY.bad_input("generated merge recipe")
        whole = ("a recipe is", "models/slices")  # problems of the recipe as a whole
        assert err.problems and all(": " in p or p.startswith(whole) for p in err.problems)
        return
    assert recipe.resolved_engine() in ("native", "mergekit")
    assert recipe.input_models()
    assert parse_recipe(yaml.safe_load(recipe.to_yaml())) == recipe
