"""W&B sweep files: every distribution against its exact definition, the file's validation, grid
enumeration, and conversion to raysoup sweeps (library, `load_sweep` and the CLI). No Ray."""

from __future__ import annotations

import copy
import math
from collections import Counter

import numpy as np
import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from engine.cli import app
from sweeps import SweepError, load_sweep, parse_sweep
from sweeps.space import Choice, LogUniform, RandInt, Uniform
from sweeps.wandb_params import DISTRIBUTIONS
from sweeps.wandb_sweeps import (
    Hyperband,
    field_paths,
    grid,
    is_wandb_sweep,
    parse_wandb_sweep,
    sample,
    to_raysoup,
)
from tests.conftest import DEMO_DATA, REPO

DRAWS = 10_000
P_MIN = 1e-3  # fixed seeds: each test draws the same samples on every run
EXAMPLES = REPO / "sweeps" / "examples"
DEMO = yaml.safe_load((EXAMPLES / "demo.yaml").read_text())
TRAIN = str(DEMO_DATA / "add" / "train.jsonl")


def draws(spec: dict, seed: int = 0) -> list:
    parsed = parse_wandb_sweep({"method": "random", "parameters": {"x": spec}})
    rng = np.random.default_rng(seed)
    return [sample(parsed, rng)["x"] for _ in range(DRAWS)]


def identity(x):
    return x


def neg_log(x):
    return -np.log(x)


# Continuous: the samples, transformed, follow the exact scipy distribution.
CONTINUOUS = [
    (
        "uniform",
        {"distribution": "uniform", "min": -1.0, "max": 3.0},
        identity,
        stats.uniform(-1, 4),
    ),
    (
        "log_uniform",
        {"distribution": "log_uniform", "min": -5, "max": 0},
        np.log,
        stats.uniform(-5, 5),
    ),
    (
        "log_uniform_values",
        {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1},
        np.log,
        stats.uniform(math.log(1e-4), math.log(0.1) - math.log(1e-4)),
    ),
    # inv_log_uniform: x = exp(-u), u uniform on [min, max].
    (
        "inv_log_uniform",
        {"distribution": "inv_log_uniform", "min": 1, "max": 4},
        neg_log,
        stats.uniform(1, 3),
    ),
    # inv_log_uniform_values: W&B's ppf makes x log-uniform on [min, max].
    (
        "inv_log_uniform_values",
        {"distribution": "inv_log_uniform_values", "min": 0.01, "max": 1.0},
        np.log,
        stats.uniform(math.log(0.01), -math.log(0.01)),
    ),
    ("normal", {"distribution": "normal", "mu": 3.0, "sigma": 2.0}, identity, stats.norm(3, 2)),
    ("normal defaults", {"distribution": "normal"}, identity, stats.norm(0, 1)),
    (
        "log_normal",
        {"distribution": "log_normal", "mu": 1.0, "sigma": 0.5},
        np.log,
        stats.norm(1, 0.5),
    ),
    ("beta", {"distribution": "beta", "a": 2, "b": 5}, identity, stats.beta(2, 5)),
    ("beta defaults", {"distribution": "beta"}, identity, stats.uniform(0, 1)),
]


@pytest.mark.parametrize("name,spec,transform,exact", CONTINUOUS, ids=[c[0] for c in CONTINUOUS])
def test_continuous_draws_follow_the_definition(name, spec, transform, exact):
    values = transform(np.array(draws(spec)))
    low, high = exact.support()
    assert np.all((values >= low) & (values <= high))
    assert stats.kstest(values, exact.cdf).pvalue > P_MIN


# Quantised: round(x / q) * q of an x with this distribution; an int when q is an int.
QUANTISED = [
    ("q_uniform", {"min": 0, "max": 10, "q": 2}, stats.uniform(0, 10), int),
    ("q_uniform", {"min": 0.0, "max": 1.0, "q": 0.25}, stats.uniform(0, 1), float),
    ("q_uniform", {"min": 0, "max": 5}, stats.uniform(0, 5), float),  # q defaults to 1.0
    ("q_log_uniform", {"min": 0, "max": 4, "q": 1}, stats.loguniform(1, math.e**4), int),
    ("q_log_uniform_values", {"min": 1, "max": 1000, "q": 5}, stats.loguniform(1, 1000), int),
    ("q_normal", {"mu": 0, "sigma": 5, "q": 0.5}, stats.norm(0, 5), float),
    ("q_log_normal", {"mu": 2, "sigma": 0.5, "q": 1}, stats.lognorm(s=0.5, scale=math.e**2), int),
    ("q_beta", {"a": 2, "b": 2, "q": 0.1}, stats.beta(2, 2), float),
]


@pytest.mark.parametrize(
    "name,spec,unrounded,kind", QUANTISED, ids=[f"{q[0]}-{q[3].__name__}" for q in QUANTISED]
)
def test_quantised_draws_are_rounded_multiples_of_q(name, spec, unrounded, kind):
    q = spec.get("q", 1.0)
    values = draws({"distribution": name, **spec})
    assert all(type(v) is kind for v in values)
    steps = np.array(values) / q
    assert np.allclose(steps, np.round(steps))
    # Each value v holds the mass of [v - q/2, v + q/2] (a value at a bound only its inner half).
    counts = Counter(values)
    low, high = unrounded.support()
    expected = {
        v: unrounded.cdf(min(v + q / 2, high)) - unrounded.cdf(max(v - q / 2, low)) for v in counts
    }
    common = sorted(v for v in counts if expected[v] * DRAWS >= 5)
    observed = np.array([counts[v] for v in common], dtype=float)
    wanted = np.array([expected[v] * DRAWS for v in common])
    # The rare values and what was never drawn pool with the most common value.
    observed[np.argmax(wanted)] += DRAWS - observed.sum()
    wanted[np.argmax(wanted)] += DRAWS - wanted.sum()
    assert stats.chisquare(observed, wanted).pvalue > P_MIN


DISCRETE = [
    ("categorical", {"values": ["a", "b", "c"]}, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}),
    (
        "categorical",
        {"values": ["a", "b", "c"], "probabilities": [0.7, 0.2, 0.1]},
        {"a": 0.7, "b": 0.2, "c": 0.1},
    ),
    (
        "categorical_w_probabilities",
        {"values": [1, 2], "probabilities": [0.25, 0.75]},
        {1: 0.25, 2: 0.75},
    ),
    ("int_uniform", {"min": 2, "max": 6}, {k: 0.2 for k in range(2, 7)}),  # max included
    ("constant", {"value": {"nested": [1]}}, {"{'nested': [1]}": 1.0}),
]


@pytest.mark.parametrize("name,spec,exact", DISCRETE, ids=[d[0] for d in DISCRETE])
def test_discrete_draws_match_their_probabilities(name, spec, exact):
    values = draws({"distribution": name, **spec})
    counts = Counter(str(v) if isinstance(v, dict) else v for v in values)
    assert set(counts) == set(exact)  # every value drawn (int_uniform's max too), no other
    for value, p in exact.items():
        error = math.sqrt(p * (1 - p) / DRAWS)
        assert abs(counts[value] / DRAWS - p) <= 4 * error + 1e-12, value
    if name == "int_uniform":
        assert all(type(v) is int for v in values)


def test_every_distribution_is_checked():
    checked = {c[1]["distribution"] for c in CONTINUOUS} | {q[0] for q in QUANTISED}
    assert checked | {d[0] for d in DISCRETE} == set(DISTRIBUTIONS)


INFERRED = [
    ({"value": 0.1}, "constant"),
    ({"values": [1, 2]}, "categorical"),
    ({"values": [1, 2], "probabilities": [0.5, 0.5]}, "categorical"),
    ({"min": 1, "max": 5}, "int_uniform"),
    ({"min": 1, "max": 5.0}, "uniform"),
    ({"min": 0.0, "max": 1}, "uniform"),
]


@pytest.mark.parametrize("spec,distribution", INFERRED)
def test_distribution_is_inferred_as_wandb_infers_it(spec, distribution):
    parsed = parse_wandb_sweep({"method": "random", "parameters": {"x": spec}})
    assert parsed.parameters["x"].distribution == distribution


NESTED = {
    "method": "random",
    "parameters": {
        "train": {
            "parameters": {
                "lr": {"value": 1},
                "opt": {"parameters": {"beta": {"values": [2]}}},
            }
        },
        "train.weight_decay": {"value": 3},
    },
}


def test_nested_parameters_draw_nested_and_dotted_names_stay_flat():
    drawn = sample(NESTED, np.random.default_rng(0))
    assert drawn == {"train": {"lr": 1, "opt": {"beta": 2}}, "train.weight_decay": 3}
    assert set(field_paths(NESTED)) == {"train.lr", "train.opt.beta", "train.weight_decay"}


def test_two_parameters_naming_one_field_are_refused():
    clash = copy.deepcopy(NESTED)
    clash["parameters"]["train.lr"] = {"value": 4}
    with pytest.raises(SweepError, match=r"parameters\.train\.lr: names the field train\.lr"):
        field_paths(clash)


def test_grid_enumerates_every_combination_as_wandb_does():
    points = grid(
        {
            "method": "grid",
            "parameters": {
                "b": {"values": ["x", "y"]},
                "a": {"min": 1, "max": 3},
                "c": {"value": 0},
                "d": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.5},
            },
        }
    )
    assert len(points) == 2 * 3 * 1 * 2
    assert {p["a"] for p in points} == {1, 2, 3}  # int_uniform: max included
    assert {p["d"] for p in points} == {0.0, 0.5}  # q_uniform: np.arange, max left out
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    # Names sorted, the last changing fastest.
    assert points[:2] == [
        {"a": 1, "b": "x", "c": 0, "d": 0.0},
        {"a": 1, "b": "x", "c": 0, "d": 0.5},
    ]


def test_grid_refuses_a_parameter_it_cannot_enumerate():
    random_file = {"method": "random", "parameters": {"lr": {"min": 0.0, "max": 1.0}}}
    with pytest.raises(
        SweepError, match=r"parameters\.lr: distribution uniform cannot be enumerated"
    ):
        grid(random_file)


def wandb_file(**overrides) -> dict:
    data = {"method": "random", "run_cap": 2, "parameters": {"lr": {"min": 0.0, "max": 1.0}}}
    return {**data, **overrides}


MALFORMED = [
    (
        "unknown top-level key",
        wandb_file(colour=1),
        "unknown key `colour`; allowed here: method, parameters",
    ),
    (
        "W&B key raysoup lacks",
        wandb_file(metrics=[]),
        "`metrics`: a W&B feature raysoup does not have",
    ),
    (
        "unknown key in a parameter",
        wandb_file(parameters={"lr": {"min": 0.0, "max": 1.0, "mx": 2}}),
        "parameters.lr: unknown key `mx`; did you mean `max`? allowed here: distribution, min, max",
    ),
    (
        "unknown key in a nested parameter",
        wandb_file(parameters={"t": {"parameters": {"lr": {"value": 1, "vlue": 2}}}}),
        "parameters.t.parameters.lr: unknown key `vlue`",
    ),
    (
        "unknown key in metric",
        wandb_file(metric={"name": "eval_loss", "goals": "minimize"}),
        "metric: unknown key `goals`; did you mean `goal`? allowed here: name, goal, target",
    ),
    (
        "unknown key in early_terminate",
        wandb_file(
            metric={"name": "x"}, early_terminate={"type": "hyperband", "min_iter": 3, "etta": 2}
        ),
        "early_terminate: unknown key `etta`; did you mean `eta`?",
    ),
    (
        "unknown distribution",
        wandb_file(parameters={"lr": {"distribution": "unifrom", "min": 0, "max": 1}}),
        "parameters.lr: distribution: unknown 'unifrom'; did you mean 'uniform'? known: constant",
    ),
    (
        "min not below max",
        wandb_file(parameters={"lr": {"min": 1.0, "max": 1.0}}),
        "parameters.lr: min 1.0 is not less than max 1.0",
    ),
    (
        "int_uniform of floats",
        wandb_file(parameters={"n": {"distribution": "int_uniform", "min": 1.5, "max": 3}}),
        "parameters.n.min: expected an integer, got 1.5",
    ),
    (
        "probabilities not summing to 1",
        wandb_file(parameters={"c": {"values": [1, 2], "probabilities": [0.5, 0.4]}}),
        "parameters.c: probabilities: they sum to 0.9, not 1",
    ),
    (
        "probabilities of another length",
        wandb_file(parameters={"c": {"values": [1, 2, 3], "probabilities": [0.5, 0.5]}}),
        "parameters.c: probabilities: 2 given for 3 values",
    ),
    (
        "continuous parameter in a grid",
        wandb_file(method="grid"),
        "  parameters.lr: distribution uniform cannot be enumerated; W&B's grid search takes",
    ),
    (
        "weighted categorical in a grid",
        wandb_file(
            method="grid", parameters={"c": {"values": [1, 2], "probabilities": [0.5, 0.5]}}
        ),
        "parameters.c: distribution categorical cannot be enumerated",
    ),
    ("bayes without metric", wandb_file(method="bayes"), "metric: method bayes optimises it"),
    (
        "hyperband without its iterations",
        wandb_file(metric={"name": "x"}, early_terminate={"type": "hyperband", "max_iter": 27}),
        "early_terminate: give min_iter, or max_iter and s",
    ),
    (
        "unknown method",
        wandb_file(method="custom"),
        "method: Input should be 'grid', 'random' or 'bayes'",
    ),
    (
        "a number YAML read as text",
        wandb_file(parameters={"lr": {"min": "1e-5", "max": 1.0}}),
        "parameters.lr.min: '1e-5' is text, not a number (YAML reads 1e-3 as text: write 1.0e-3)",
    ),
    (
        "a bare value",
        wandb_file(parameters={"lr": 0.1}),
        "parameters.lr: a parameter is a mapping (for a fixed value write {value: 0.1})",
    ),
    (
        "a name W&B refuses",
        wandb_file(parameters={"1lr": {"value": 1}}),
        "parameters: parameter name '1lr'",
    ),
    ("no parameters", wandb_file(parameters={}), "parameters: give at least one parameter"),
]


@pytest.mark.parametrize("name,data,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_name_the_key(name, data, message):
    with pytest.raises(SweepError) as err:
        parse_wandb_sweep(data, source="w.yaml")
    assert message in str(err.value)


def test_is_wandb_sweep_tells_the_formats_apart():
    assert is_wandb_sweep(wandb_file())
    assert not is_wandb_sweep(DEMO)
    assert not is_wandb_sweep([1, 2])


def converted(data: dict, base: dict | None = DEMO):
    mapping = to_raysoup(data, base)
    return mapping, parse_sweep(mapping)


def test_grid_converts_to_grid_spaces_over_the_demo():
    data = {
        "method": "grid",
        "parameters": {
            "train": {"parameters": {"lr": {"values": [0.001, 0.003]}}},
            "train.warmup_steps": {"min": 0, "max": 2},
            "seeds": {"value": [0]},
        },
    }
    before = copy.deepcopy(DEMO)
    mapping, sweep = converted(data)
    assert DEMO == before  # the base is never changed
    assert mapping["train"]["lr"] == {"grid": [0.001, 0.003]}
    assert mapping["train"]["warmup_steps"] == {"grid": [0, 1, 2]}  # W&B's grid: every integer
    assert mapping["search"] == {"type": "grid"} and mapping["model"] == DEMO["model"]
    assert sweep.train.epochs == 20 and sweep.seeds == [0]
    demo_trials = parse_sweep(DEMO).trial_count() // len(DEMO["seeds"])
    assert sweep.trial_count() == demo_trials * 2 * 3


def test_random_converts_each_space_and_takes_num_samples_from_run_cap():
    data = {
        "method": "random",
        "run_cap": 5,
        "metric": {"name": "accuracy", "goal": "maximize"},
        "parameters": {
            "train.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
            "train.weight_decay": {"distribution": "uniform", "min": 0.0, "max": 0.2},
            "train.warmup_steps": {"min": 0, "max": 20},
            "train.schedule": {"values": ["linear", "cosine"]},
            "train.epochs": {"distribution": "log_uniform", "min": 0.0, "max": 2.0},
        },
    }
    mapping, sweep = converted(data)
    spaces = sweep.search_space()
    assert isinstance(spaces["train.lr"], LogUniform) and spaces["train.lr"].bounds() == (
        1e-4,
        1e-2,
    )
    assert isinstance(spaces["train.weight_decay"], Uniform)
    assert isinstance(spaces["train.warmup_steps"], RandInt) and spaces[
        "train.warmup_steps"
    ].bounds() == (0, 20)
    assert isinstance(spaces["train.schedule"], Choice)
    assert spaces["train.epochs"].bounds() == pytest.approx((1.0, math.e**2))
    assert (sweep.search.type, sweep.num_samples) == ("random", 5)
    assert (sweep.metric, sweep.direction()) == ("accuracy", "max")


LOG_KINDS = [
    ("log_uniform", {"min": -6.0, "max": -2.0}),
    ("log_uniform_values", {"min": 1e-3, "max": 0.5}),
    ("inv_log_uniform", {"min": 1.0, "max": 5.0}),
    ("inv_log_uniform_values", {"min": 1e-3, "max": 0.5}),
]


@pytest.mark.parametrize("name,spec", LOG_KINDS, ids=[k[0] for k in LOG_KINDS])
def test_log_kinds_convert_to_the_loguniform_they_draw_from(name, spec):
    data = {
        "method": "random",
        "run_cap": 2,
        "parameters": {"train.lr": {"distribution": name, **spec}},
    }
    low, high = to_raysoup(data)["train"]["lr"]["loguniform"]
    logs = np.log(draws({"distribution": name, **spec}, seed=1))
    assert stats.kstest(logs, stats.uniform(math.log(low), math.log(high / low)).cdf).pvalue > P_MIN


def test_bayes_with_hyperband_by_min_iter_is_optuna_with_asha():
    data = {
        "method": "bayes",
        "run_cap": 8,
        "metric": {"name": "eval_loss"},  # W&B's goal defaults to minimize
        "early_terminate": {"type": "hyperband", "min_iter": 50},  # eta defaults to 3
        "parameters": {
            "train.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}
        },
    }
    base = {**DEMO, "search": {"type": "optuna", "startup_trials": 3}}
    mapping, sweep = converted(data, base)
    assert mapping["search"] == {"type": "optuna", "startup_trials": 3}  # the base's options kept
    assert (sweep.num_samples, sweep.direction()) == (8, "min")
    assert mapping["scheduler"] == {
        "type": "asha",
        "time": "step",
        "grace_period": 50,
        "reduction_factor": 3,
    }
    assert sweep.scheduler.max_t is None


def test_hyperband_by_max_iter_and_s_starts_at_wandbs_first_band():
    data = {
        "method": "bayes",
        "run_cap": 8,
        "metric": {"name": "eval_loss", "goal": "minimize"},
        "early_terminate": {"type": "hyperband", "max_iter": 450, "s": 2, "eta": 3},
        "parameters": {"train.lr": {"distribution": "uniform", "min": 1e-4, "max": 1e-2}},
    }
    _, sweep = converted(data)
    assert sweep.search.type == "optuna"
    scheduler = sweep.scheduler
    assert (scheduler.grace_period, scheduler.reduction_factor, scheduler.max_t) == (50, 3, 450)
    # W&B's bands: max_iter / eta**k rounded down, for k up to s, none below 1: 6 / 3 = 2 is
    # the first band, where max_iter / eta**s rounded down would be 0.
    assert Hyperband(type="hyperband", max_iter=6, s=3, eta=3).first_band() == 2
    assert Hyperband(type="hyperband", min_iter=4, eta=2).first_band() == 4


NOT_CONVERTED = [
    (
        "random without run_cap",
        wandb_file(run_cap=None),
        "run_cap: method random draws until stopped",
    ),
    ("program", wandb_file(program="train.py"), "program: names a script of yours"),
    ("command", wandb_file(command=["python"]), "command: names a script of yours"),
    (
        "metric target",
        wandb_file(metric={"name": "eval_loss", "target": 0.1}),
        "metric.target: not supported by conversion: raysoup has no field",
    ),
    (
        "weighted categorical",
        wandb_file(parameters={"train.lr": {"values": [0.1, 0.2], "probabilities": [0.5, 0.5]}}),
        "parameters.train.lr: probabilities: raysoup's choice draws its values uniformly",
    ),
    (
        "normal",
        wandb_file(parameters={"train.lr": {"distribution": "normal"}}),
        "parameters.train.lr: distribution normal has no raysoup search space; the ones that "
        "convert: constant, categorical, int_uniform, uniform, log_uniform",
    ),
    (
        "non-strict hyperband",
        wandb_file(
            metric={"name": "x"},
            early_terminate={"type": "hyperband", "min_iter": 2, "strict": False},
        ),
        "early_terminate.strict: false is not supported by conversion",
    ),
    (
        "grid capped below its size",
        wandb_file(method="grid", run_cap=1, parameters={"train.lr": {"values": [0.1, 0.2]}}),
        "run_cap: 1 is fewer than the 2 grid points",
    ),
]


@pytest.mark.parametrize("name,data,message", NOT_CONVERTED, ids=[n[0] for n in NOT_CONVERTED])
def test_what_does_not_convert_is_named(name, data, message):
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(SweepError) as err:
        to_raysoup(data, DEMO)
    assert message in str(err.value)


def test_a_base_value_in_the_way_of_a_field_is_named():
    data = wandb_file(parameters={"seeds.first": {"value": 1}})
    with pytest.raises(SweepError, match=r"parameters\.seeds\.first: the base's seeds is a list"):
        to_raysoup(data, DEMO)


STANDALONE = {
    "method": "random",
    "run_cap": 3,
    "parameters": {
        "name": {"value": "from-wandb"},
        "model": {"parameters": {"preset": {"value": "tiny-random"}}},
        "data": {"value": {"train": TRAIN, "format": "prompt_completion"}},
        "train.lr": {"values": [0.001, 0.01]},
    },
}


def test_load_sweep_reads_a_wandb_file_that_names_its_model_and_data(tmp_path):
    path = tmp_path / "wandb.yaml"
    path.write_text(yaml.safe_dump(STANDALONE))
    sweep = load_sweep(path)
    assert (sweep.name, sweep.model.preset, sweep.data.train) == (
        "from-wandb",
        "tiny-random",
        TRAIN,
    )
    assert sweep.search_space()["train.lr"].values() == [0.001, 0.01]
    assert (sweep.search.type, sweep.num_samples) == ("random", 3)


def test_load_sweep_refuses_a_wandb_file_that_runs_a_script(tmp_path):
    path = tmp_path / "wandb.yaml"
    path.write_text(yaml.safe_dump({**STANDALONE, "program": "train.py"}))
    with pytest.raises(SweepError) as err:
        load_sweep(path)
    assert "runs a script of yours, not a raysoup sweep; `raysoup run`" in str(err.value)
    assert "`raysoup convert wandb` is for" in str(err.value)


def test_cli_converts_over_a_base_and_writes_a_loadable_sweep(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump({"name": "b", "model": {"preset": "tiny-random"}, "data": {"train": TRAIN}})
    )
    source = tmp_path / "wandb.yaml"
    source.write_text(
        yaml.safe_dump(wandb_file(parameters={"train.lr": {"values": [0.001, 0.01]}}))
    )
    before = base.read_text(), source.read_text()
    out = tmp_path / "out.yaml"
    args = ["convert", "wandb", str(source), "--base", str(base), "--out", str(out)]
    runner = CliRunner()
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    sweep = load_sweep(out)
    assert sweep.search_space()["train.lr"].values() == [0.001, 0.01] and sweep.num_samples == 2
    assert (base.read_text(), source.read_text()) == before
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "exists; pass --force" in again.output
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    onto_base = runner.invoke(app, [*args[:-1], str(base), "--force"])
    assert onto_base.exit_code == 2 and "is one of the input files" in onto_base.output
    assert (base.read_text(), source.read_text()) == before


def test_cli_names_the_problem_of_a_file_that_does_not_convert(tmp_path):
    source = tmp_path / "wandb.yaml"
    source.write_text(yaml.safe_dump(wandb_file(run_cap=None)))
    done = CliRunner().invoke(
        app, ["convert", "wandb", str(source), "--out", str(tmp_path / "o.yaml")]
    )
    assert done.exit_code == 2
    assert "run_cap" in done.output and "Traceback" not in done.output
    assert not (tmp_path / "o.yaml").exists()


def test_cli_converts_the_shipped_example_over_the_demo(tmp_path):
    out = tmp_path / "wandb_demo.yaml"
    args = [
        "convert",
        "wandb",
        str(EXAMPLES / "wandb_sweep.yaml"),
        "--base",
        str(EXAMPLES / "demo.yaml"),
    ]
    done = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "relative paths kept from" in done.output  # written away from the demo's folder
    sweep = parse_sweep(yaml.safe_load(out.read_text())).resolve_paths(EXAMPLES)
    assert set(sweep.search_space()) == {"train.lr", "train.warmup_steps", "train.weight_decay"}
    assert (sweep.search.type, sweep.num_samples, sweep.scheduler.type) == ("random", 4, "asha")
