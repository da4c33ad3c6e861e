"""Kill a running sweep's driver, then `raysoup resume`: finished trials are not run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import DEMO_DATA, REPO

SWEEP = {
    "name": "killed",
    "model": {"preset": "tiny-random"},
    "data": {"train": str(DEMO_DATA / "add" / "train.jsonl"), "format": "prompt_completion"},
    "train": {
        "lr": {"grid": [1e-3, 2e-3, 3e-3, 4e-3]},
        "max_steps": 8,
        "batch_size": 8,
        "seq_len": 24,
        "eval_every": 4,
    },
    "checkpoint": {"every": 4, "keep": 1},
    "resources": {"max_concurrent": 1},
}


def _finished_trials(tune_dir: Path) -> set[str]:
    """Trial ids that Tune's saved experiment state records as finished."""
    done = set()
    for state in tune_dir.glob("experiment_state*.json"):
        try:
            trials = json.loads(state.read_text())["trial_data"]
        except (ValueError, KeyError):
            continue
        for data, _ in trials:
            info = json.loads(data)
            if info.get("status") == "TERMINATED":
                done.add(info["trial_id"])
    return done


def _results(tune_dir: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in tune_dir.glob("*/result.json")}


def _raysoup(*args, **kwargs):
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0.5"}
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def killed_after(tmp_path: Path, sweep: dict, finished: int) -> Path:
    """`raysoup run` of `sweep` in its own process group, killed with SIGKILL (with the local Ray
    it started) once Tune's saved state records `finished` trials as finished; its run folder."""
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep))
    run_dir = tmp_path / "runs" / sweep["name"]
    driver = _raysoup(
        "run", str(sweep_file), "--storage", str(tmp_path / "runs"), start_new_session=True
    )
    deadline = time.time() + 300
    while len(_finished_trials(run_dir / "tune")) < finished and time.time() < deadline:
        assert driver.poll() is None, driver.stdout.read()
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    return run_dir


# The same kill and resume runs on every CI run with the run directory on s3:// (and the resume
# on another cache): tests/test_storage.py. This one, on a local folder, with --runslow.
@pytest.mark.slow
def test_resume_after_killing_the_driver_skips_finished_trials(tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(SWEEP))
    run_dir, tune_dir = tmp_path / "runs" / "killed", tmp_path / "runs" / "killed" / "tune"
    driver = _raysoup(
        "run", str(sweep_file), "--storage", str(tmp_path / "runs"), start_new_session=True
    )
    deadline = time.time() + 240
    while not _finished_trials(tune_dir) and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    finished = _finished_trials(tune_dir)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    assert finished, driver.stdout.read()
    assert len(finished) < 4, "the sweep finished before it could be interrupted"
    before = _results(tune_dir)
    assert not (run_dir / "trials.parquet").exists()

    resumed = _raysoup("resume", str(run_dir))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 4 and set(trials["status"]) == {"done"}, trials["error"].tolist()
    after = _results(tune_dir)
    kept = [d for d in before if any(d.startswith(f"{t}-") for t in finished)]
    assert len(kept) == len(finished)
    for trial_dir in kept:
        assert after[trial_dir] == before[trial_dir], f"finished trial {trial_dir} was run again"
    assert set(trials["steps"]) == {8}


def test_resuming_a_folder_that_is_not_a_run_directory_says_so(tmp_path):
    """No sweep.yaml: a clear error naming the folder, before Ray starts or anything is
    written; the command shows it as one line, without a traceback."""
    import pytest
    from typer.testing import CliRunner

    import engine
    from engine.cli import app
    from sweeps import SweepError

    (tmp_path / "notes.txt").write_text("not a run\n")
    for folder in (tmp_path, tmp_path / "missing"):
        with pytest.raises(SweepError, match=f"{folder}: not a run directory \\(no sweep.yaml\\)"):
            engine.resume(folder, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    out = CliRunner().invoke(app, ["resume", str(tmp_path)])
    assert "not a run directory (no sweep.yaml)" in " ".join(out.output.split())
    assert "Traceback" not in out.output and isinstance(out.exception, SystemExit)
