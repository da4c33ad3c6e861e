"""The run directory's lock (one driver at a time) and Tune's saved state: a second driver is
refused, a damaged state stops `raysoup resume` with a way out, and `--rebuild-state` finishes
the sweep reusing every finished trial."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from engine.core.errors import RunError
from engine.core.rundir import RunDir
from engine.train import records, state
from engine.train.experiment import start_mode
from tests.faults.conftest import finish, raysoup, small_sweep, write_sweep


def test_a_lock_whose_driver_is_gone_is_taken_over(tmp_path, tally):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout.strip()  # fmt: skip
    run.lock_file.write_text(json.dumps({"host": "vm", "pid": int(dead), "since": 0}))
    with run.lock() as held:
        assert held.previous["pid"] == int(dead)
        assert json.loads(run.lock_file.read_text())["pid"] == os.getpid()
    assert run.lock_file.read_text() == ""  # a clean end leaves nothing to take over
    tally.injected("stale lock")
    tally.survived("stale lock")


def test_a_lock_held_by_a_live_driver_is_refused(tmp_path, tally):
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from engine.core.rundir import RunDir\n"
         f"with RunDir(__import__('pathlib').Path({str(run.root)!r})).lock():\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"is in use by another raysoup \\(pid {holder.pid}"):
            with run.lock():
                pass
    finally:
        holder.kill()
        holder.wait()
    with run.lock() as held:  # killed: its lock went with it
        assert held.previous["pid"] == holder.pid
    tally.bad_input("a second driver for one run directory")


def test_damaged_state_with_trials_stops_and_without_them_is_rebuilt(tmp_path, tally):
    run = RunDir(tmp_path / "run")
    run.tune.mkdir(parents=True)
    (run.tune / state.TUNER).write_bytes(pickle.dumps({}))
    assert start_mode(run) == "rebuild"  # nothing started: nothing to lose
    trial = run.tune / "abc_00000-s0"
    records.record_attempt(trial, "s0", None)
    # Tune had saved no trial (killed before its first save): its folders are all there is.
    assert start_mode(run) == "rebuild"
    (run.tune / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [["')
    with pytest.raises(RunError, match="experiment_state-2026-01-01_00-00-00.json cannot be"):
        start_mode(run)
    assert start_mode(run, rebuild=True) == "rebuild"
    # readable again, and the scheduler's state (in the callbacks' state) cut
    (run.tune / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    (run.tune / "basic-variant-state-2026-01-01_00-00-00.json").write_text("{}")
    callbacks = run.tune / "callback-states-2026-01-01_00-00-00.pkl"
    callbacks.write_bytes(pickle.dumps({0: {"scheduler": b"x" * 64}})[:20])
    with pytest.raises(RunError, match="callback-states-2026-01-01_00-00-00.pkl cannot be read"):
        start_mode(run)
    tally.bad_input("damaged Tune state", 3)


@pytest.mark.ray
@pytest.mark.slow  # its short version is in test_one_sweep_many_faults.py
def test_a_second_driver_is_refused_and_a_damaged_state_is_rebuilt(tmp_path, tally):
    """One sweep, three faults: a second `raysoup run` while the first trains; the first
    killed after a trial finished; its newest experiment state cut in half."""
    sweep = small_sweep(tmp_path, name="locked", seeds=[0, 1, 2], train={"max_steps": 12})
    path = write_sweep(tmp_path / "sweep.yaml", sweep)
    run = RunDir(tmp_path / "runs" / "locked")
    first = raysoup("run", str(path), "--storage", str(tmp_path / "runs"))
    _wait(first, lambda: any(run.tune.glob("*/attempts.jsonl")))
    code, out = finish(raysoup("run", str(path), "--storage", str(tmp_path / "runs")), 300)
    assert code == 1 and f"is in use by another raysoup (pid {first.pid}" in " ".join(out.split())
    assert "Traceback" not in out, out
    tally.injected("second driver for one run directory")

    _wait(first, lambda: _finished(run) and len(list(run.tune.glob("*/attempts.jsonl"))) > 1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished = _finished(run)
    results = {name: (run.tune / name / "result.json").read_bytes() for name in finished}
    newest = sorted(run.tune.glob(state.EXPERIMENT))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    tally.injected("driver killed, Tune state cut in half")

    code, out = finish(raysoup("resume", str(run.root)), 300)
    said = " ".join(out.split())
    assert code == 1 and f"{newest.name} cannot be read" in said and "--rebuild-state" in said
    assert "Traceback" not in out, out
    code, out = finish(raysoup("resume", str(run.root), "--rebuild-state"), 600)
    assert code == 0, out
    trials = pd.read_parquet(run.trials)
    assert set(trials["status"]) == {"done"} and len(trials) == 3
    assert {name: (run.tune / name / "result.json").read_bytes() for name in finished} == results
    assert set(finished) <= {Path(p).name for p in trials["path"]}  # reused where they were
    assert list(run.tune.glob(f"{state.ASIDE}*/{newest.name}"))  # the damaged file is kept
    tally.survived("second driver for one run directory")
    tally.survived("driver killed, Tune state cut in half")


def _finished(run: RunDir) -> list[str]:
    found = []
    for folder in run.tune.glob("*/attempts.jsonl"):
        kept = records.complete_checkpoints([folder.parent])
        if kept and records.is_final(kept[-1]):
            found.append(folder.parent.name)
    return found


def _wait(proc, condition, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
