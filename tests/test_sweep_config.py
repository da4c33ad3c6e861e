"""Sweep definitions: one table of good and bad sweeps through the same checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps import Sweep, SweepError, dump_sweep, load_sweep, parse_sweep
from sweeps.load import convert_wandb
from sweeps.space import Grid, LogUniform
from sweeps.wandb_sweeps import is_wandb_sweep
from tests.conftest import DEMO_DATA, REPO

TRAIN = str(DEMO_DATA / "add" / "train.jsonl")
PAIRS = str(DEMO_DATA / "add" / "pairs_train.jsonl")


def sweep_dict(**overrides) -> dict:
    base = {
        "name": "t",
        "model": {"preset": "tiny-random"},
        "data": {"train": TRAIN, "format": "prompt_completion"},
    }
    for path, value in overrides.items():
        node = base
        *parents, leaf = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return base


GOOD = [
    ("defaults", {}, {}),
    ("grid lr", {"train__lr": {"grid": [1e-4, 1e-3]}}, {"train.lr": Grid}),
    ("loguniform lr", {"train__lr": {"loguniform": [1e-5, 1e-3]}}, {"train.lr": LogUniform}),
    ("method grid", {"finetune__method": {"grid": ["full", "lora"]}}, {"finetune.method": Grid}),
    ("lora rank randint", {"finetune__lora__r": {"randint": [4, 16]}}, {"finetune.lora.r": object}),
    (
        "choice schedule",
        {"train__schedule": {"choice": ["linear", "cosine"]}},
        {"train.schedule": object},
    ),
    ("counts", {"data_scale": [100, 10]}, {}),
    ("fractions", {"data_scale": [0.5, 1.0]}, {}),
    (
        "objectives on pairs",
        {
            "data": {"train": PAIRS, "format": "preference"},
            "finetune__objective": {"grid": ["sft", "dpo", "simpo"]},
            "finetune__preference__beta": {"grid": [0.1, 0.5]},
        },
        {"finetune.objective": Grid, "finetune.preference.beta": Grid},
    ),
]


@pytest.mark.parametrize("name,overrides,spaces", GOOD, ids=[g[0] for g in GOOD])
def test_good_sweeps_validate_and_round_trip(name, overrides, spaces):
    sweep = parse_sweep(sweep_dict(**overrides))
    found = sweep.search_space()
    assert set(found) == set(spaces)
    for path, kind in spaces.items():
        assert isinstance(found[path], kind)
    again = parse_sweep(__import__("yaml").safe_load(dump_sweep(sweep)))
    assert again == sweep


BAD = [
    ("unknown key", {"train__lrr": 1.0}, "train.lrr: unknown key"),
    ("wrong type", {"train__batch_size": "big"}, "train.batch_size"),
    ("negative lr", {"train__lr": -0.1}, "train.lr: Input should be greater than 0"),
    ("negative lr in grid", {"train__lr": {"grid": [0.1, -1]}}, "train.lr.grid[1]"),
    (
        "unknown method",
        {"finetune__method": "prefix_tuning"},
        "finetune.method: Input should be 'full', 'lora', 'qlora' or 'hft'",
    ),
    (
        "unknown distribution",
        {"train__lr": {"gaussian": [0, 1]}},
        "train.lr: not a value or a known search space; search spaces here: grid, choice, uniform",
    ),
    (
        "range on categorical",
        {"train__schedule": {"uniform": [0, 1]}},
        "search spaces here: grid, choice",
    ),
    ("reversed bounds", {"train__lr": {"uniform": [0.1, 0.01]}}, "low < high"),
    ("infinite lr", {"train__lr": float("inf")}, "train.lr: Input should be a finite number"),
    ("NaN in a grid", {"train__lr": {"grid": [1e-4, float("nan")]}}, "train.lr.grid[1]: Input"),
    ("infinite bound", {"train__lr": {"loguniform": [1e-5, float("inf")]}}, "loguniform[1]"),
    ("mixed data scale", {"data_scale": [100, 0.5]}, "data_scale: give example counts"),
    ("fraction above one", {"data_scale": [1.5]}, "data_scale"),
    ("repeated seeds", {"seeds": [1, 1]}, "seeds: seeds must be distinct"),
    ("two model sources", {"model__path": "/x"}, "give exactly one of"),
    ("bad data suffix", {"data__train": "x.txt"}, "data.train: 'x.txt' is not a known data file"),
    ("bad name", {"name": "a b"}, "name: 'a b' is not a usable folder name"),
    ("bad mode", {"mode": "best"}, "mode: Input should be 'min' or 'max'"),
    (
        "dpo on text",
        {"finetune__objective": "dpo"},
        "finetune.objective: dpo trains on pairs of a chosen and a rejected completion; set "
        "data.format: preference",
    ),
    (
        "unknown objective",
        {"finetune__objective": "cpo"},
        "finetune.objective: Input should be 'sft', 'dpo', 'ipo', 'kto', 'simpo' or 'orpo'",
    ),
    (
        "pairs on a worker group",
        {"data": {"train": PAIRS, "format": "preference"}, "resources__workers": 2},
        "data.format: preference trains in one process",
    ),
    (
        "reference over a sampled seq_len",
        {
            "data": {"train": PAIRS, "format": "preference"},
            "finetune__objective": "dpo",
            "train__seq_len": {"randint": [16, 64]},
        },
        "train.seq_len: the reference model's log-probabilities are computed once per sequence",
    ),
    (
        "label smoothing of one half",
        {"finetune__preference__label_smoothing": 0.5},
        "less than 0.5",
    ),
]


@pytest.mark.parametrize("name,overrides,message", BAD, ids=[b[0] for b in BAD])
def test_bad_sweeps_name_the_field(name, overrides, message):
    with pytest.raises(SweepError) as err:
        parse_sweep(sweep_dict(**overrides))
    assert message in str(err.value)


def test_for_trial_fills_values_and_revalidates():
    sweep = parse_sweep(
        sweep_dict(train__lr={"grid": [1e-4, 1e-3]}, finetune__method={"grid": ["full", "lora"]})
    )
    trial = sweep.for_trial({"train.lr": 1e-3, "finetune.method": "lora"})
    assert trial.search_space() == {}
    assert (trial.train.lr, trial.finetune.method) == (1e-3, "lora")
    with pytest.raises(ValueError):
        sweep.for_trial({"train.lr": -1.0})


def test_python_api_helpers_match_yaml():
    from sweeps import DataConfig, ModelConfig, TrainConfig, grid

    built = Sweep(
        name="t",
        model=ModelConfig(preset="tiny-random"),
        data=DataConfig(train=TRAIN, format="prompt_completion"),
        train=TrainConfig(lr=grid([1e-4, 1e-3])),
    )
    assert built == parse_sweep(sweep_dict(train__lr={"grid": [1e-4, 1e-3]}))


EXAMPLES = sorted((REPO / "sweeps" / "examples").glob("*.*"))


def _load_example(path: Path) -> Sweep:
    if path.suffix != ".yaml" or not is_wandb_sweep(yaml.safe_load(path.read_text())):
        return load_sweep(path)
    # A W&B sweep file holds only what it searches: it is run over the demo, as its header says.
    converted = convert_wandb(path, base=path.parent / "demo.yaml")
    return parse_sweep(converted, str(path)).resolve_paths(path.parent)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_loads_and_passes_preflight(path):
    from engine.preflight import check

    sweep = _load_example(path)
    check(sweep)
    assert all(Path(sweep.task_data(task).train).is_file() for task in sweep.task_names())


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel:\n  preset: demo\n  path: [unclosed\n")
    with pytest.raises(SweepError, match=r"YAML syntax error at line \d+"):
        load_sweep(bad)


def test_relative_data_paths_are_taken_from_the_sweep_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "s.yaml").write_text(
        "name: x\nmodel: {preset: demo}\ndata: {train: d/train.jsonl}\n"
    )
    assert load_sweep(tmp_path / "s.yaml").data.train == str(tmp_path / "d" / "train.jsonl")


PREFLIGHT = [
    ("missing file", {"data__train": "/nonexistent/train.jsonl"}, "data.train: no such file"),
    (
        "missing field",
        {"data__prompt_field": "question"},
        "data.train: ",
    ),
    ("too many examples", {"data_scale": [10, 100000]}, "data_scale: 100000 examples asked"),
    ("pairs without chosen", {"data__format": "preference"}, "train.jsonl has no field 'chosen'"),
    ("fp16 on cpu", {"train__precision": "fp16"}, "train.precision: fp16 needs a GPU"),
    ("missing model folder", {"model": {"path": "./no-such-model"}}, "model.path: no such model"),
]


@pytest.mark.parametrize("name,overrides,message", PREFLIGHT, ids=[p[0] for p in PREFLIGHT])
def test_preflight_rejects_before_work_starts(name, overrides, message):
    from engine.preflight import check

    with pytest.raises(SweepError) as err:
        check(parse_sweep(sweep_dict(**overrides)))
    assert message in str(err.value)


def _raysoup(*args, cwd=None):
    # A wide terminal, so rich does not wrap the one-line messages these tests read.
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_cli_validate_reports_field_and_exits_nonzero_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"name: x\nmodel: {{preset: demo}}\ndata: {{train: {TRAIN}}}\ntrain: {{lr: -1, lrr: 2}}\n"
    )
    out = _raysoup("validate", str(bad))
    assert out.returncode == 2
    assert "train.lr: Input should be greater than 0" in out.stderr
    assert "train.lrr: unknown key" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_cli_validate_accepts_the_demo():
    out = _raysoup("validate", "sweeps/examples/demo.yaml")
    assert out.returncode == 0, out.stderr
    assert "16 trial(s)" in out.stdout


def test_reference_docs_match_the_config_models():
    from sweeps.reference import render

    assert (REPO / "docs" / "sweeps.md").read_text() == render(), (
        "docs/sweeps.md is stale: run `python -m sweeps.reference > docs/sweeps.md`"
    )


def test_preference_objectives_rank_by_preference_accuracy_unless_told():
    pairs = {"data": {"train": PAIRS, "format": "preference"}, "finetune__objective": "dpo"}
    chosen = parse_sweep(sweep_dict(**pairs))
    assert (chosen.metric, chosen.evaluate.rank_by, chosen.direction()) == (
        "preference_accuracy",
        "preference_accuracy",
        "max",
    )
    told = parse_sweep(sweep_dict(**pairs, metric="eval_loss", evaluate={"rank_by": "ppl"}))
    assert (told.metric, told.evaluate.rank_by) == ("eval_loss", "ppl")
    sft = parse_sweep(sweep_dict(data={"train": PAIRS, "format": "preference"}))
    assert (sft.metric, sft.evaluate.rank_by) == ("eval_loss", "loss")
    assert not chosen.metric_is_evaluated()  # trials report it themselves
