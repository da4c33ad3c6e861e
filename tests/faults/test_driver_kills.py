"""The driver killed with SIGKILL, then `raysoup resume`: nothing that was finished is done
again or lost, and nothing the killed driver's Ray started is left running.

Both tests are `slow` (the default suite's driver kill is in `test_one_sweep_many_faults.py`):
one kill during evaluation, and kills at random points of all five stages, again and again (the
pattern of Ray's `test_experiment_restore`), until a resume finishes the sweep.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from engine.core.session import leftover_processes
from engine.train import records
from tests.faults.conftest import finish, raysoup, small_sweep, write_sweep
from tests.faults.helpers import (
    STAGES,
    check_complete,
    done_trials,
    evals_rows,
    kill_driver,
    lost_records,
    pairs,
    stage_of,
)

pytestmark = pytest.mark.ray  # Ray runs in the `raysoup` processes the tests start
TRIALS, STEPS = 3, 8


def kill_sweep(root: Path, name: str = "killed") -> dict:
    """Three seeds, a soup across them and each trial's checkpoint average: 6 candidates on 2
    evaluation sets."""
    return small_sweep(
        root,
        name=name,
        seeds=list(range(TRIALS)),
        train={"max_steps": STEPS},
        merge=[{"type": "checkpoint_average", "select": "last", "k": 2}, {"type": "soup"}],
    )


PAIRS = 16  # base, 3 trials, 3 checkpoint averages and a soup, on 2 sets


def check_nothing_lost(run: Path, before: dict, tally) -> None:
    """Finished trials untouched, evaluations kept, each merge and evaluation exactly once."""
    lost = lost_records(run, before)
    tally.lost(lost)
    assert lost == 0, "a finished trial or evaluation was redone or lost"
    check_complete(run)


@pytest.mark.slow
def test_killed_during_evaluation_resume_keeps_every_finished_evaluation(tmp_path, tally):
    sweep = write_sweep(tmp_path / "sweep.yaml", kill_sweep(tmp_path))
    run = tmp_path / "runs" / "killed"
    driver = raysoup("run", str(sweep), "--storage", str(tmp_path / "runs"))
    deadline = time.monotonic() + 600
    while pairs(run) < 1 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert driver.poll() is None, "the sweep ended before evaluation could be interrupted"
    session = kill_driver(driver, run)
    tally.injected("driver killed during evaluation")
    before = {"trials": done_trials(run), "evals": evals_rows(run)}
    assert 0 < len({k[:2] for k in before["evals"]}) < PAIRS, "nothing or all evaluated"
    code, out = finish(raysoup("resume", str(run)), timeout=600)
    assert code == 0, out
    assert "Traceback" not in out and "ERROR" not in out, out
    check_nothing_lost(run, before, tally)
    assert session and not leftover_processes(session)
    tally.survived("driver killed during evaluation")


@pytest.mark.slow
def test_killed_at_random_points_of_every_stage_resume_finishes(tmp_path, tally):
    """Seven kills: one at a random moment of each stage in turn, then two at random times;
    then a resume finishes the sweep."""
    rng = random.Random()
    sweep = write_sweep(tmp_path / "sweep.yaml", kill_sweep(tmp_path))
    run = tmp_path / "runs" / "killed"
    kills, sessions, before = [], [], {"trials": {}, "evals": {}}
    command = ["run", str(sweep), "--storage", str(tmp_path / "runs")]
    for target in [*STAGES, None, None, "finish"]:
        driver = raysoup(*command)
        command = ["resume", str(run)]
        if target == "finish":
            break
        reached = _wait_for(driver, run, target, rng)
        if driver.poll() is not None:  # it ended first
            code, out = finish(driver, timeout=60)
            if code == 1 and "--rebuild-state" in out:  # a kill cut Tune's saved state
                command = ["resume", str(run), "--rebuild-state"]
                tally.injected("Tune state damaged by a kill")
                tally.survived("Tune state damaged by a kill")
            continue
        sessions.append(kill_driver(driver, run))
        kills.append(reached or "start")
        tally.injected(f"driver killed during {reached or 'start'}")
        before["trials"].update(done_trials(run))
        before["evals"].update(evals_rows(run))
    code, out = finish(driver, timeout=900)
    assert code == 0, out
    print(f"killed during: {', '.join(kills)}")
    assert len(kills) >= 5 and set(STAGES) <= set(kills), kills
    check_nothing_lost(run, before, tally)
    assert not [s for s in sessions if s and leftover_processes(s)]
    tally.survived("driver kills", len(kills))


def _wait_for(driver, run: Path, target: str | None, rng: random.Random) -> str | None:
    """Wait until the driver is in `target`, then a random moment more (short stages get
    short waits; in training, until a random share of the steps is checkpointed); with no
    target, a random 3 to 40 s. Returns the stage it is in then."""
    if target is None:
        deadline = time.monotonic() + rng.uniform(3, 40)
        while driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return stage_of(run, PAIRS)
    steps = rng.randrange(2, TRIALS * STEPS, 2)
    deadline = time.monotonic() + 900
    while driver.poll() is None and time.monotonic() < deadline:
        now = stage_of(run, PAIRS)
        if now == target == "train" and _trained_steps(run) >= steps:
            return now
        if now == target != "train":
            time.sleep(rng.uniform(0, 1.0 if target == "prepare" else 0.3))
            return stage_of(run, PAIRS)
        time.sleep(0.02)
    return None


def _trained_steps(run: Path) -> int:
    """Steps the trials have checkpointed, all together."""
    total = 0
    for folder in (run / "tune").glob("*/attempts.jsonl"):
        kept = records.complete_checkpoints([folder.parent])
        total += records.checkpoint_info(kept[-1]).get("step", 0) if kept else 0
    return total
