"""Early stopping on real local Ray: ASHA stops trials that fall behind, a stopped trial is a
result (its newest checkpoint is a candidate), resume never trains it again; the settings."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import engine
from engine.evaluate.stage import sweep_candidates
from engine.train import records
from engine.train.schedulers import StopRecorder, build, first_report
from sweeps import SweepError, parse_sweep
from sweeps.trials import search_progress
from tests.test_sweep_config import sweep_dict
from tests.test_sweep_run import tiny_sweep

# One learning rate that learns the task and four that barely move the model, two trials at a
# time: whichever order the first two reach a rung in, the later trials meet a cutoff there.
GOOD, POOR = [3e-3], [1e-7, 2e-7, 3e-7, 5e-7]


def asha_sweep(name: str) -> dict:
    sweep = tiny_sweep(
        name,
        finetune={"method": "full"},
        train={
            "lr": {"grid": GOOD + POOR},
            "max_steps": 12,
            "batch_size": 8,
            "seq_len": 24,
            "eval_every": 2,
        },
        data_scale=None,
        checkpoint={"every": 2, "keep": None},
        resources={"max_concurrent": 2},
        scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 2},
    )
    return sweep


@pytest.fixture(scope="module")
def asha(tmp_path_factory, ray_local):
    storage = tmp_path_factory.mktemp("runs")
    return engine.run(parse_sweep(asha_sweep("asha")), storage=str(storage), progress=False)


def test_asha_stops_trials_that_fall_behind_and_the_best_survives(asha):
    trials = asha.trials
    assert set(trials["status"]) <= {"done", "stopped"}, trials["error"].tolist()
    stopped = trials[trials["status"] == "stopped"]
    assert len(stopped) >= 2, trials[["name", "status", "stopped_at"]]
    assert set(stopped["train.lr"]) <= set(POOR)  # only trials that do not learn
    assert (stopped["stopped_at"] < 12).all() and set(stopped["stopped_by"]) == {"asha"}
    best = asha.leaderboard().iloc[0]
    assert best["status"] == "done" and best["train.lr"] in GOOD
    # fewer optimizer steps than the full grid (12 steps for each trial)
    assert trials["steps"].sum() < 12 * len(trials)


def test_a_stopped_trial_keeps_its_newest_checkpoint_as_its_result(asha):
    for row in asha.trials[asha.trials["status"] == "stopped"].itertuples():
        folder = Path(row.path)
        stop = json.loads((folder / records.STOPPED).read_text())
        assert stop["step"] == row.stopped_at and stop["metrics"]["step"] == row.stopped_at
        newest = records.complete_checkpoints([folder])[-1]
        assert row.checkpoint == str(newest)
        assert row.steps == records.checkpoint_info(newest)["step"] <= row.stopped_at
        assert row.eval_loss == records.checkpoint_info(newest)["eval_loss"]
    candidates = {c.name for c in sweep_candidates(asha.trials, None, "base")}
    assert set(asha.trials["name"]) <= candidates  # stopped trials are evaluated too


def test_the_report_shows_the_stops_and_the_best_against_compute(asha):
    root = Path(asha.run_dir)
    page = (root / "report.html").read_text()
    stopped = int((asha.trials["status"] == "stopped").sum())
    assert f"Trials stopped early ({stopped} of {len(asha.trials)})" in page
    assert (root / "plots" / "search_progress.png").stat().st_size > 0
    progress = search_progress(asha.trials, "eval_loss", "min")
    assert progress["best"].is_monotonic_decreasing
    assert progress["best"].iloc[-1] == asha.trials["eval_loss"].min()
    ran = asha.trials["stopped_at"].fillna(asha.trials["steps"])
    assert progress["compute"].iloc[-1] == ran.sum()


def test_resume_never_trains_a_stopped_trial_again(asha):
    before = asha.trials.set_index("name")[["status", "attempts", "steps"]]
    again = engine.resume(asha.run_dir, progress=False)
    after = again.trials.set_index("name")[["status", "attempts", "steps"]]
    assert after.sort_index().equals(before.sort_index())


def _trial(trial_id: str, **last):
    return SimpleNamespace(trial_id=trial_id, last_result=last)


def test_only_a_trial_completed_before_its_last_step_is_recorded_as_stopped(tmp_path):
    recorder = StopRecorder(tmp_path, "median")
    recorder.on_trial_complete(0, [], _trial("a_1", name="x", step=6, total_steps=6))
    recorder.on_trial_complete(0, [], _trial("a_2", name="y/n40", step=2, total_steps=6))
    recorder.on_trial_complete(0, [], _trial("a_3"))  # returned without reporting
    assert not (tmp_path / "a_1-x").exists() and not (tmp_path / "a_3").exists()
    stop = records.read_stop([tmp_path / "a_2-y-n40"])
    assert stop["step"] == 2 and stop["by"] == "median" and stop["metrics"]["name"] == "y/n40"


def test_scheduler_settings_reach_tune():
    sweep = parse_sweep(
        sweep_dict(
            train__eval_every=5,
            train__batch_size={"grid": [4, 8]},
            train__grad_accum=2,
            metric="accuracy",
            scheduler={"type": "median", "time": "examples_seen", "min_samples_required": 2},
        )
    )
    rule = build(sweep)
    assert type(rule).__name__ == "MedianStoppingRule"
    assert (rule._time_attr, rule._metric, rule._mode) == ("examples_seen", "accuracy", "max")
    assert rule._grace_period == first_report(sweep, "examples_seen") == 5 * 4 * 2
    assert rule._min_samples_required == 2
    asha = build(parse_sweep(sweep_dict(scheduler={"type": "asha", "max_t": 80})))
    assert (asha._time_attr, asha._metric, asha._mode, asha._max_t) == (
        "step",
        "eval_loss",
        "min",
        80,
    )
    assert build(parse_sweep(sweep_dict())) is None  # fifo: Tune's own


@pytest.mark.parametrize(
    "scheduler,message",
    [
        ({"type": "hyperband"}, "unknown scheduler type 'hyperband'; known: fifo, asha, median"),
        ({"grace_period": 2}, "unknown scheduler type None"),
        ({"type": "asha", "grace_period": 50, "max_t": 10}, "grace_period 50 exceeds max_t 10"),
        ({"type": "asha", "reduction_factor": 1}, "scheduler.asha.reduction_factor"),
        ({"type": "asha", "max_t": 40}, "scheduler.max_t: 40 ends trials before their first"),
        ({"type": "median", "time": "seconds"}, "scheduler.median.time"),
        ({"type": "fifo", "grace_period": 1}, "scheduler.fifo.grace_period"),
    ],
)
def test_bad_scheduler_settings_name_the_field(scheduler, message):
    with pytest.raises(SweepError) as err:
        parse_sweep(sweep_dict(scheduler=scheduler))
    assert message in str(err.value)


def test_early_stopping_of_worker_group_trials_is_refused():
    with pytest.raises(SweepError) as err:
        parse_sweep(sweep_dict(scheduler={"type": "asha"}, resources={"workers": 2}))
    assert "scheduler.type: asha stops trials early" in str(err.value)


def test_search_progress_counts_a_stopped_trial_up_to_its_stop():
    trials = pd.DataFrame(
        {
            "name": ["a", "b", "c", "d"],
            "status": ["done", "stopped", "done", "error"],
            "checkpoint": ["a/c", "b/c", "c/c", None],
            "finished_at": [3.0, 1.0, 2.0, 0.5],
            "accuracy": [0.6, 0.2, 0.7, None],
            "steps": [10, 4, 10, 2],
            "stopped_at": [None, 6, None, None],
        }
    )
    progress = search_progress(trials, "accuracy", "max")
    assert list(progress["name"]) == ["b", "c", "a"]  # in the order they ended; no failed one
    assert list(progress["compute"]) == [6, 16, 26]
    assert list(progress["best"]) == [0.2, 0.7, 0.7]
    old = search_progress(trials.drop(columns="stopped_at"), "accuracy", "max")
    assert list(old["compute"]) == [4, 14, 24]
