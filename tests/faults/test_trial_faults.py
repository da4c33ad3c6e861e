"""Faults inside a trial, on real local Ray: its process killed with SIGKILL (it is retried from
its newest complete checkpoint and ends exactly where an uninterrupted run ends), and a full disk
while it checkpoints, then while the sweep evaluates (a clear error, earlier checkpoints intact,
resumed once there is room)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

import engine
from engine.core.errors import RunError
from engine.core.rundir import RunDir
from engine.train import records
from engine.train.loop import TrialSpec, train
from sweeps import parse_sweep
from tests.faults.conftest import fill, small_sweep
from tests.faults.helpers import done_trials

pytestmark = pytest.mark.usefixtures("ray_local")


class Kept:
    """A `Session` for the reference run: keeps the last report and checkpoint."""

    def __init__(self, root: Path) -> None:
        self.root, self.last, self.checkpoint = root, {}, None

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        self.last = dict(metrics)
        if checkpoint is not None:
            self.checkpoint = self.root / f"step{metrics['step']}"
            os.replace(checkpoint, self.checkpoint)

    def restore_dir(self) -> Path | None:
        return None


def watch(run: Path, until, timeout: float = 300):
    """Wait (in a thread) until `until()` is truthy; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = until()
        if found:
            return found
        time.sleep(0.05)
    raise TimeoutError(f"nothing happened in {run} within {timeout} s")


def newest_step(folder: Path) -> int:
    done = records.complete_checkpoints([folder])
    return records.checkpoint_info(done[-1])["step"] if done else 0


@pytest.mark.slow  # its short version is in test_one_sweep_many_faults.py
def test_a_killed_trial_resumes_from_its_checkpoint_and_matches(tmp_path, tally):
    steps = 12
    sweep = parse_sweep(
        small_sweep(tmp_path, train={"max_steps": steps}, checkpoint={"every": 2, "keep": 2})
    )
    kill_after = random.Random().choice(range(2, steps, 2))  # a random checkpointed step
    run = RunDir(tmp_path / "runs" / sweep.name)
    killed: dict = {}

    def killer() -> None:
        folder = watch(run.root, lambda: next(run.tune.glob("*/attempts.jsonl"), None)).parent
        watch(run.root, lambda: newest_step(folder) >= kill_after)
        pid = records.read_attempts(folder)[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed.update(pid=pid, at=newest_step(folder))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = engine.run(sweep, storage=str(tmp_path / "runs"), progress=False)
    thread.join(timeout=5)
    tally.injected("trial process SIGKILLed")
    assert killed, "the trial ended before it could be killed"
    trial = result.trials.iloc[0]
    assert trial["status"] == "done" and trial["attempts"] == 2, trial.to_dict()
    attempts = records.read_attempts(Path(trial["path"]))
    assert attempts[0]["pid"] == killed["pid"] and attempts[1]["pid"] != killed["pid"]
    assert attempts[1]["resumed_from"] == killed["at"]  # the newest complete checkpoint
    tally.survived("trial process SIGKILLed")

    # The same trial without a fault, in this process, from the same prepared data.
    identity = result.trials.iloc[0]
    spec = TrialSpec(sweep, str(run.model), run.data / "default", None, int(identity["seed"]))
    alone = Kept(tmp_path)
    train(spec, alone)
    final = records.checkpoint_info(Path(trial["checkpoint"]))
    for key in ("train_loss", "eval_loss", "tokens_seen", "examples_seen", "step"):
        assert final[key] == pytest.approx(alone.last[key], abs=1e-5), key
    ours = load_file(Path(trial["checkpoint"]) / "model.safetensors")
    reference = load_file(alone.checkpoint / "model.safetensors")
    assert max(float((ours[k] - reference[k]).abs().max()) for k in ours) <= 1e-5


# Slow (about 50 s on 2 cores, two sweeps on a small disk): a full disk during a merge is on
# every CI run (tests/faults/test_merge_inputs.py); during training and evaluation with --runslow.
@pytest.mark.slow
def test_a_full_disk_while_checkpointing_then_evaluating_keeps_what_was_saved(
    tmp_path, small_disk, tally
):
    disk = small_disk("24m")
    sweep = parse_sweep(
        small_sweep(
            tmp_path,
            name="full",
            train={"max_steps": 12},
            checkpoint={"every": 2, "keep": 2},
            resources={"max_concurrent": 1, "max_failures": 1},
        )
    )
    run = RunDir(disk / sweep.name)
    saved: dict = {}

    def filler() -> None:
        folder = watch(run.root, lambda: next(run.tune.glob("*/attempts.jsonl"), None)).parent
        watch(run.root, lambda: newest_step(folder) >= 2)
        fill(disk)
        saved.update({p.name: records.marker(p) for p in records.complete_checkpoints([folder])})

    thread = threading.Thread(target=filler, daemon=True)
    thread.start()
    with pytest.raises(RunError, match="no space left on the device"):
        engine.run(sweep, storage=str(disk), progress=False)
    thread.join(timeout=5)
    tally.injected("disk full while checkpointing")
    folder = next(run.tune.glob("*/attempts.jsonl")).parent
    kept = records.complete_checkpoints([folder])
    assert {p.name: records.marker(p) for p in kept} == saved  # earlier checkpoints intact
    assert not list(folder.glob(f".{records.PREFIX}*"))  # no partial one left
    (disk / "filler.bin").unlink()

    # Then the disk fills again once training has ended, before evaluation writes anything.
    trained_after = time.time()
    thread = threading.Thread(
        target=lambda: (watch(run.root, lambda: trained(run, trained_after)), fill(disk)),
        daemon=True,
    )
    thread.start()
    with pytest.raises(RunError, match="no space left on the device"):
        resume_after(run, tally)
    thread.join(timeout=5)
    tally.injected("disk full while evaluating")
    trial = pd.read_parquet(run.trials).iloc[0]
    assert trial["status"] == "done", trial.to_dict()
    assert records.read_attempts(Path(trial["path"]))[-1]["resumed_from"] >= 2
    tally.survived("disk full while checkpointing")
    finished = done_trials(run.root)
    assert not list(disk.rglob(".*.tmp*")), "a partial file stayed on the full disk"

    (disk / "filler.bin").unlink()
    again = engine.resume(run.root, progress=False)
    assert done_trials(run.root) == finished  # the finished trial was not trained again
    evals = again.evals
    assert set(evals["status"]) == {"ok"} and set(evals["candidate"]) == {"base", trial["name"]}
    assert not evals.duplicated(["candidate", "eval_set", "metric"]).any()
    tally.survived("disk full while evaluating")


def trained(run: RunDir, after: float) -> bool:
    """The train stage wrote its table and leaderboard after `after` (what comes next is
    evaluation: this sweep has no merges and no data-scale axis)."""
    try:
        table, board = run.trials.stat().st_mtime, run.leaderboard.stat().st_mtime
    except OSError:
        return False
    return table > after and board >= table


def resume_after(run: RunDir, tally):
    """`raysoup resume`; when the fault also damaged Tune's saved state (a full disk cuts the
    copy Tune makes of it), the error says so and `--rebuild-state` finishes the sweep."""
    try:
        return engine.resume(run.root, progress=False)
    except RunError as err:
        assert "is damaged" in str(err) and "--rebuild-state" in str(err), err
        tally.injected("Tune state damaged by the fault")
        tally.survived("Tune state damaged by the fault")
        return engine.resume(run.root, progress=False, rebuild_state=True)
