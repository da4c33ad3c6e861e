"""Early stopping on real local Ray: ASHA stops trials that fall behind, a stopped trial is a
result (its newest checkpoint is a candidate), resume never trains it again; the settings; a
restored experiment's scheduler keeps what it recorded before the restore (Tune's own
schedulers and trials, without a cluster)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import ray.cloudpickle as cloudpickle
from ray import tune
from ray.tune.experiment import Trial

import engine
from engine.evaluate.stage import sweep_candidates
from engine.train import records
from engine.train.experiment import reuses_processes
from engine.train.schedulers import KeepState, StopRecorder, build, first_report
from sweeps import SweepError, parse_sweep
from sweeps.trials import search_progress
from tests.conftest import DEMO_DATA
from tests.test_resume import _finished_trials, _raysoup, killed_after
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
        ({"type": "bohb"}, "unknown scheduler type 'bohb'; known: fifo, asha, median, hyperband"),
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


def test_worker_group_trials_that_a_scheduler_stops_or_pauses_get_a_process_each():
    """A reused process would keep a stopped or paused trial's group training; only worker
    groups under a scheduler that pauses get `paused.json` written."""
    pbt = {"type": "pbt", "perturbation_interval": 2, "mutations": {"train.lr": [1e-3, 1e-2]}}
    for scheduler in ({"type": "asha"}, {"type": "median"}, pbt):
        sweep = parse_sweep(
            sweep_dict(
                train={"lr": {"grid": [1e-3, 1e-2]}, "max_steps": 4, "eval_every": 2},
                checkpoint={"every": 2},
                data_scale=None,
                seeds=[0],
                scheduler=scheduler,
                resources={"workers": 2},
            )
        )
        assert sweep.uses_worker_group() and not reuses_processes(sweep)
        assert sweep.scheduler.pauses_trials() == (scheduler is pbt)
    assert reuses_processes(parse_sweep(sweep_dict(resources={"workers": 2})))
    assert reuses_processes(parse_sweep(sweep_dict(scheduler={"type": "asha"})))
    bohb = bohb_sweep(resources={"workers": 2})
    assert bohb.scheduler.pauses_trials() and not reuses_processes(bohb)


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


def tune_trials(*ids: str) -> list[Trial]:
    return [Trial("__fake", trial_id=i, config={}, stub=True) for i in ids]


# What the schedulers ask of Tune's controller here: its searcher (none) and the live trials.
CONTROLLER = SimpleNamespace(search_alg=None, get_live_trials=lambda: [])


def restored(scheduler, state: dict, trial_ids: tuple[str, ...]):
    """`scheduler` as a restored experiment has it: unpickled as Tune saved it at the start
    (`tuner.pkl`), its trials restored as new objects with their ids, then the state put back
    before the first step."""
    again = cloudpickle.loads(cloudpickle.dumps(scheduler))
    keep = KeepState(again)
    keep.set_state(state)
    trials = tune_trials(*trial_ids)
    for trial in trials:
        again.on_trial_add(CONTROLLER, trial)
    keep.on_step_begin(0, trials)
    return again, trials


def report(scheduler, trial, step: int, loss: float) -> str:
    return scheduler.on_trial_result(CONTROLLER, trial, {"step": step, "eval_loss": loss})


@pytest.mark.parametrize("kind", ["asha", "median"])
def test_a_restored_experiment_judges_trials_against_those_before_the_restore(kind):
    """Tune saves no scheduler: without `KeepState`, the trial reported after the restore is
    the first at its rung (ASHA) or has no others to compare with (the median rule), and goes
    on; with it, it is stopped by the scores recorded before the driver died."""
    settings = {"type": kind, "grace_period": 2}
    if kind == "asha":
        settings["reduction_factor"] = 2
    else:
        settings["min_samples_required"] = 2
    fresh = build(parse_sweep(sweep_dict(scheduler=settings)))
    before = cloudpickle.loads(cloudpickle.dumps(fresh))
    ids = ("good_1", "good_2", "late")
    trials = tune_trials(*ids)
    for trial in trials:
        before.on_trial_add(CONTROLLER, trial)
    for step in (2, 4):
        for good in trials[:2]:
            assert report(before, good, step, 0.5) == "CONTINUE"
    state = KeepState(before).get_state()

    kept, (*_, late) = restored(fresh, state, ids)
    assert report(kept, late, 2, 3.0) == "STOP"
    lost = cloudpickle.loads(cloudpickle.dumps(fresh))
    lost.on_trial_add(CONTROLLER, late)
    assert report(lost, late, 2, 3.0) == "CONTINUE"  # what Tune alone would do


def test_restored_pbt_keeps_its_scores_and_drops_trials_tune_did_not_restore():
    sweep = parse_sweep(
        sweep_dict(
            train={"lr": {"grid": [1e-3, 1e-2]}, "eval_every": 2},
            checkpoint={"every": 2},
            scheduler={"type": "pbt", "perturbation_interval": 4,
                       "mutations": {"train.lr": {"loguniform": [1e-4, 1e-1]}}},
        )
    )  # fmt: skip
    fresh = build(sweep)
    before = cloudpickle.loads(cloudpickle.dumps(fresh))
    trials = tune_trials("a", "b", "added_after_the_checkpoint")
    for trial in trials:
        before.on_trial_add(CONTROLLER, trial)
    for trial, loss in zip(trials, (0.4, 0.9, 0.7)):
        before._save_trial_state(
            before._trial_state[trial], 2, {"step": 2, "eval_loss": loss}, trial
        )
    state = KeepState(before).get_state()

    kept, (a, b) = restored(fresh, state, ("a", "b"))
    assert {t.trial_id: s.last_score for t, s in kept._trial_state.items()} == {
        "a": -0.4, "b": -0.9  # PBT maximises: minus the loss
    }  # fmt: skip
    assert kept._trial_state[a].last_result["eval_loss"] == 0.4
    assert kept._custom_explore_fn is not None  # what is code stays the restored scheduler's


def test_an_unreadable_saved_scheduler_starts_afresh():
    fresh = build(parse_sweep(sweep_dict(scheduler={"type": "asha"})))
    again, _ = restored(fresh, {"scheduler": b"not a pickle"}, ("a",))
    assert again._trial_info.keys() == {"a"}  # as Tune alone would have it


def bohb_sweep(steps: int = 8, **extra):
    """BOHB's HyperBand over `steps` steps with a report each step: with 8, its first bracket
    holds 8 trials, with budgets 1, 2, 4 and 8; with 2, 2 trials and budgets 1 and 2."""
    return parse_sweep(
        sweep_dict(
            train={"lr": {"loguniform": [1e-4, 1e-2]}, "max_steps": steps, "eval_every": 1},
            checkpoint={"every": 1},
            search={"type": "bohb"},
            scheduler={"type": "hyperband", "reduction_factor": 2},
            **extra,
        )
    )


def as_tune_reports(scheduler, controller, trial: Trial, step: int, loss: float) -> str:
    """A report as Tune's controller handles it: the scheduler decides, and the searcher is
    told the result unless the decision stops the trial."""
    result = {"step": step, "eval_loss": loss}
    decision = scheduler.on_trial_result(controller, trial, result)
    if decision != "STOP":
        controller.search_alg.on_trial_result(trial.trial_id, result)
    return decision


def test_bohb_learns_every_result_at_a_budget_even_the_one_that_stops_its_trial():
    """Tune tells the searcher no result of a trial stopped on it: the worse trial whose
    report closes the bracket would be missing from BOHB's model (it would see only the
    better points). The pause before goes through Tune's ConcurrencyLimiter to raysoup's
    searcher (HyperBand tells the searcher of each pause)."""
    sweep = bohb_sweep(steps=2)
    scheduler = build(sweep)
    assert scheduler._max_t_attr == 2  # max_t: train.max_steps
    good, worse = trials = tune_trials("good", "worse")
    controller, search = bohb_controller(sweep, trials)
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
        trial.set_status(Trial.RUNNING)
    assert as_tune_reports(scheduler, controller, good, 1, 0.5) == "PAUSE"
    good.set_status(Trial.PAUSED)
    assert as_tune_reports(scheduler, controller, worse, 1, 0.9) == "STOP"
    assert search.searcher.bohber.losses == {1: [0.5, 0.9]}


def bohb_controller(sweep, trials: list[Trial]):
    """What BOHB's HyperBand asks of Tune's controller, with raysoup's searcher behind Tune's
    ConcurrencyLimiter, each of `trials` suggested by it; and that searcher."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.search_generator import SearchGenerator

    from engine.train import searchers

    search = searchers.build(sweep)
    limited = ConcurrencyLimiter(search, max_concurrent=len(trials))
    for trial in trials:
        limited.suggest(trial.trial_id)
    controller = SimpleNamespace(search_alg=SearchGenerator(limited), get_live_trials=lambda: [])
    return controller, search


def test_a_restored_hyperband_keeps_its_brackets_without_trials_tune_did_not_restore():
    sweep = bohb_sweep()
    fresh = build(sweep)
    before = cloudpickle.loads(cloudpickle.dumps(fresh))
    trials = tune_trials("a", "b", "added_after_the_checkpoint")
    controller, _ = bohb_controller(sweep, trials)
    for trial in trials:
        before.on_trial_add(controller, trial)
    for trial, loss in zip(trials, (0.4, 0.9, 0.7)):
        assert as_tune_reports(before, controller, trial, 1, loss) == "PAUSE"
    state = KeepState(before).get_state()

    kept, (a, b) = restored(fresh, state, ("a", "b"))
    bracket = kept._trial_info[a][0]
    assert kept._trial_info[b][0] is bracket and kept._state["bracket"] is bracket
    assert {t.trial_id: r["eval_loss"] for t, r in bracket._live_trials.items()} == {
        "a": 0.4, "b": 0.9
    }  # fmt: skip
    assert [t.trial_id for t in bracket._all_trials] == ["a", "b"]
    assert kept._hyperbands == [[bracket]]


HOLD = "RAYSOUP_TEST_HOLD"


def held_score(prediction: str, reference: str) -> float:
    """A user metric for the kill test below: the grid's first trial scores 1 on every example,
    the second 0; while the file that RAYSOUP_TEST_HOLD names exists, the second waits in its
    first score, so it has not reported when its driver is killed."""
    if tune.get_context().get_trial_id().endswith("_00000"):
        return 1.0
    while Path(os.environ.get(HOLD, "/nonexistent")).exists():
        time.sleep(0.2)
    return 0.0


# About a minute on 2 cores: with --runslow. Without it, the tests above restore Tune's own
# schedulers from the state `KeepState` saves, with Tune's trials restored as new objects.
@pytest.mark.slow
def test_a_killed_sweep_resumes_with_its_schedulers_rungs(tmp_path, monkeypatch):
    """ASHA, one trial at a time. The first trial reaches every rung with the best score; the
    driver is killed (SIGKILL, with its local Ray) once Tune's saved state records that, while
    the second waits in its first report (its step-2 checkpoint is saved, its score not yet).
    Resumed, it continues from that checkpoint and reports the worst score at the next rung
    (step 4): it is stopped there, against the first trial's score recorded before the kill
    (with the scheduler starting empty, it would be alone at its rungs and go on to its end)."""
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv(HOLD, str(hold))
    sweep = tiny_sweep(
        "rungs",
        finetune={"method": "full"},
        train={"lr": {"grid": [3e-3, 1e-7]}, "max_steps": 8, "seq_len": 24, "eval_every": 2},
        data={
            "train": str(DEMO_DATA / "add" / "train.jsonl"),
            "eval": str(DEMO_DATA / "add" / "eval.jsonl"),
            "format": "prompt_completion",
        },
        data_scale=None,
        checkpoint={"every": 2, "keep": None},
        resources={"max_concurrent": 1},
        metric="tests.test_schedulers:held_score",
        scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 2},
    )
    run_dir = killed_after(tmp_path, sweep, finished=1)
    assert len(_finished_trials(run_dir / "tune")) == 1
    hold.unlink()

    resumed = _raysoup("resume", str(run_dir))
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("train.lr")
    assert trials.loc[3e-3, "status"] == "done" and trials.loc[3e-3, "steps"] == 8
    late = trials.loc[1e-7]  # it continues from its step-2 checkpoint and reports at step 4
    assert (late["status"], late["stopped_by"], late["stopped_at"]) == ("stopped", "asha", 4)
