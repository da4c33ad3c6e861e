"""Population-based training on real local Ray with the tiny model: the worse trial clones the
better one's checkpoint (its weights continue exactly from the clone's source at that step),
the lineage is in trials.parquet and the report; PB2 clones the same way with a value its
bandit chose inside the bounds; and what PBT and PB2 refuse."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import engine
from engine.core.models import base_model_path
from engine.core.rundir import RunDir
from engine.train import records
from engine.train.loop import TrialSpec, train
from engine.train.pb2 import from_coordinate, to_coordinate
from sweeps import SweepError, parse_sweep
from sweeps.space import LogUniform, RandInt, Uniform
from tests.test_sweep_config import sweep_dict
from tests.test_sweep_run import tiny_sweep
from tests.test_train_loop import RecordingSession
from tests.wandb_files import read_runs

STEPS, INTERVAL = 10, 6  # one perturbation, at step 6
GOOD, BAD = 3e-3, 1e-7


BOUNDS = (1e-7, 1e-2)
PB2 = {"type": "pb2", "bounds": {"train.lr": {"loguniform": list(BOUNDS)}}, "mutations": None}


def pbt_sweep(name: str, **scheduler) -> dict:
    sweep = tiny_sweep(
        name,
        finetune={"method": "full"},
        train={
            "lr": {"grid": [GOOD, BAD]},
            "max_steps": STEPS,
            "batch_size": 8,
            "seq_len": 24,
            "eval_every": 2,
        },  # fmt: skip
        data_scale=None,
        checkpoint={"every": 2, "keep": None},
        resources={"max_concurrent": 2},
        scheduler={
            "type": "pbt",
            "perturbation_interval": INTERVAL,
            "quantile_fraction": 0.5,
            "resample_probability": 0.0,
            "synch": True,  # both trials compared at step 6: the worse one clones
            "mutations": {"train.lr": {"loguniform": list(BOUNDS)}},
            **scheduler,
        },
    )
    sweep["scheduler"] = {k: v for k, v in sweep["scheduler"].items() if v is not None}
    if sweep["scheduler"]["type"] == "pb2":
        del sweep["scheduler"]["resample_probability"]
    return sweep


@pytest.fixture(scope="module")
def pbt(tmp_path_factory, ray_local):
    storage = tmp_path_factory.mktemp("runs")
    return engine.run(parse_sweep(pbt_sweep("pbt")), storage=str(storage), progress=False)


@pytest.fixture(scope="module")
def pb2(tmp_path_factory, ray_local):
    storage = tmp_path_factory.mktemp("runs")
    sweep = pbt_sweep("pb2", **PB2)
    sweep["tracking"] = {"wandb": {"project": "tests", "mode": "offline"}}
    return engine.run(parse_sweep(sweep), storage=str(storage), progress=False)


def test_the_worse_trial_clones_the_better_at_the_perturbation(pbt):
    trials = pbt.trials.set_index("train.lr", drop=False)
    assert list(pbt.trials["status"]) == ["done", "done"]
    good, bad = trials.loc[GOOD], None
    clones = {row["name"]: list(row["cloned"]) for row in pbt.trials.to_dict("records")}
    assert clones[good["name"]] == []
    (bad,) = [name for name, made in clones.items() if made]
    assert clones[bad] == [f"{good['name']}@{INTERVAL}"]
    # it now trains with the good trial's rate, perturbed by 0.8 or 1.2
    final_lr = pbt.trials.set_index("name").loc[bad, "train.lr"]
    assert final_lr == pytest.approx(GOOD * 0.8) or final_lr == pytest.approx(GOOD * 1.2)


def test_the_clone_continues_exactly_from_the_sources_checkpoint(pbt, tmp_path):
    run = RunDir(Path(pbt.run_dir))
    by_name = pbt.trials.set_index("name")
    (bad,) = [n for n, c in zip(pbt.trials["name"], pbt.trials["cloned"]) if len(c)]
    source_name = by_name.loc[bad, "cloned"][0].rsplit("@", 1)[0]
    folders = records.trial_folders(run.tune, bad)
    attempt = [a for f in folders for a in records.read_attempts(f) if a.get("clone")][-1]
    assert attempt["resumed_from"] == attempt["clone"]["step"] == INTERVAL
    source = [
        c
        for c in records.complete_checkpoints(records.trial_folders(run.tune, source_name))
        if records.checkpoint_info(c)["step"] == INTERVAL
    ][0]
    # the bad trial's own early checkpoints were discarded: all it keeps came after the clone
    kept = [records.checkpoint_info(c)["step"] for c in records.complete_checkpoints(folders)]
    assert kept == list(range(INTERVAL + 2, STEPS + 1, 2))
    sweep = run.load_sweep().for_trial(attempt["cell"]["config"]["values"])
    row = by_name.loc[bad]
    spec = TrialSpec(
        sweep=sweep,
        model_path=base_model_path(sweep, run.model),
        data_dir=run.data / row["task"],
        task=row["task"],
        seed=int(row["seed"]),
        data_size=None,
        name=bad,
    )
    again = RecordingSession(tmp_path, restore=source)
    train(spec, again)
    ours = load_file(Path(row["checkpoint"]) / "model.safetensors")
    reference = load_file(again.checkpoints[-1] / "model.safetensors")
    assert max(float((ours[k] - reference[k]).abs().max()) for k in ours) <= 1e-6
    assert not torch.equal(
        ours[next(iter(ours))], load_file(source / "model.safetensors")[next(iter(ours))]
    )


def test_pb2_clones_the_better_checkpoint_with_a_rate_its_bandit_chose(pb2):
    by_lr = pb2.trials.set_index("name")
    assert list(pb2.trials["status"]) == ["done", "done"]
    (bad,) = [n for n, c in zip(pb2.trials["name"], pb2.trials["cloned"]) if len(c)]
    (good,) = set(by_lr.index) - {bad}
    assert list(by_lr.loc[bad, "cloned"]) == [f"{good}@{INTERVAL}"]
    assert list(by_lr.loc[good, "cloned"]) == []
    run = RunDir(Path(pb2.run_dir))
    folders = records.trial_folders(run.tune, bad)
    attempt = [a for f in folders for a in records.read_attempts(f) if a.get("clone")][-1]
    assert attempt["resumed_from"] == INTERVAL  # from the good trial's step-6 checkpoint
    lr = by_lr.loc[bad, "train.lr"]
    assert BOUNDS[0] <= lr <= BOUNDS[1] and lr not in (GOOD, BAD)
    assert attempt["cell"]["config"]["values"]["train.lr"] == lr
    # W&B: the attempt PB2 paused ended as paused; the next one says whom it cloned
    runs = [r for r in read_runs(run.root) if r.job_type == "train" and r.name == bad]
    states = [(r.summary["raysoup/state"], r.exit_code, r.config.get("clone")) for r in runs]
    paused, cloned = sorted(states, key=lambda s: s[2] is not None)
    assert paused == ("paused", 0, None)
    assert cloned[:2] == ("finished", 0) and cloned[2]["from"] == good
    assert cloned[2]["step"] == INTERVAL


@pytest.mark.parametrize(
    "space, value",
    [(LogUniform(loguniform=[1e-6, 1e-2]), 3e-4), (Uniform(uniform=[0.0, 0.3]), 0.1),
     (RandInt(randint=[1, 64]), 8)],
)  # fmt: skip
def test_pb2_coordinates_are_log10_for_log_ranges_and_round_trip(space, value):
    coordinate = to_coordinate(space, value)
    log = isinstance(space, LogUniform)
    assert coordinate == pytest.approx(math.log10(value) if log else value)
    assert from_coordinate(space, coordinate) == pytest.approx(value)
    low, high = space.bounds()
    assert from_coordinate(space, to_coordinate(space, high) + 5) == high  # kept inside
    assert from_coordinate(space, to_coordinate(space, low) - 5) == low
    assert isinstance(from_coordinate(space, coordinate + 0.4), int) == isinstance(space, RandInt)


def test_the_report_draws_the_lineage(pbt):
    run = RunDir(Path(pbt.run_dir))
    assert (run.plots / "lineage.png").is_file()
    assert "Population-based training" in run.report.read_text()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seeds": [0, 1]}, "pbt's population must be one task, data size and seed"),
        ({"scheduler": {"mutations": {"train.weight_decay": [0.0, 0.1]}}},
         "scheduler.mutations.train.weight_decay: not a searched field"),
        ({"scheduler": {"perturbation_interval": 3}}, "not a multiple of train.eval_every"),
        ({"checkpoint": {"every": 4}}, "checkpoint.every must equal train.eval_every"),
        ({"scheduler": {"mutations": {"train.lr": {"normal": [0, 1]}}}},
         "a list of values or a range"),
        ({"search": {"type": "optuna"}}, "pbt chooses its own configurations"),
    ],
)  # fmt: skip
def test_what_pbt_refuses_is_named(change, message):
    refuse(change, message)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seeds": [0, 1]}, "pb2's population must be one task, data size and seed"),
        ({"scheduler": {"bounds": {"train.lr": [1e-7, 1e-2]}}}, "bounds.train.lr"),
        ({"scheduler": {"bounds": {"train.lr": {"choice": [1e-3, 1e-2]}}}},
         "pb2 chooses values inside a range"),
        ({"scheduler": {"bounds": {"train.weight_decay": {"uniform": [0, 0.1]}}}},
         "scheduler.bounds.train.weight_decay: not a searched field"),
        ({"scheduler": {"mutations": {"train.lr": [1e-3]}}}, "mutations"),
        ({"search": {"type": "optuna"}}, "pb2 chooses its own configurations"),
    ],
)  # fmt: skip
def test_what_pb2_refuses_is_named(change, message):
    refuse(change, message, {"type": "pb2", "bounds": PB2["bounds"]})


def test_pb2_without_scikit_learn_is_refused_naming_the_package(monkeypatch):
    find_spec = importlib.util.find_spec
    missing = lambda name: None if name == "sklearn" else find_spec(name)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", missing)
    refuse({}, "pb2 needs the package 'scikit-learn'", {"type": "pb2", "bounds": PB2["bounds"]})


def refuse(change: dict, message: str, scheduler: dict | None = None) -> None:
    sweep = sweep_dict(
        train={"lr": {"grid": [GOOD, BAD]}, "eval_every": 2},
        checkpoint={"every": 2},
        scheduler={"perturbation_interval": 2, **(scheduler or {"type": "pbt",
                   "mutations": {"train.lr": {"loguniform": list(BOUNDS)}}})},
    )  # fmt: skip
    for key, value in change.items():
        sweep[key] = {**sweep[key], **value} if isinstance(sweep.get(key), dict) else value
    with pytest.raises(SweepError, match=message):
        parse_sweep(sweep)
