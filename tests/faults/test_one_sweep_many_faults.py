"""One sweep through five faults, each a short representative of its kind (the long versions
are in the `slow` tests): a second driver for the same run directory, a trial's process
SIGKILLed on its first attempt at a random checkpoint, the driver SIGKILLed during evaluation,
Tune's saved state cut in half, and a prepared training shard cut in half. Then `raysoup
resume` names the damaged state and `raysoup resume --rebuild-state` finishes the sweep,
preparing the data again. All along, secret environment variables are set to marker values
that must appear nowhere, and the sweep logs to W&B offline (its files are searched too).

One module-scoped run feeds every test (a sweep on 2 cores takes minutes)."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from engine.core.rundir import RunDir
from engine.core.session import leftover_processes
from engine.train import records, state
from engine.train.loop import TrialSpec, train
from sweeps import parse_sweep
from tests.faults.conftest import TALLY, finish, raysoup, small_sweep, write_sweep
from tests.faults.helpers import (
    check_complete,
    done_trials,
    evals_rows,
    kill_driver,
    lost_records,
    pairs,
    wait,
)
from tests.wandb_files import read_runs

pytestmark = pytest.mark.ray  # Ray runs in the `raysoup` processes the tests start
SECRETS = {
    "WANDB_API_KEY": f"wandb{secrets.token_hex(16)}",
    "HF_TOKEN": f"hf_{secrets.token_hex(16)}",
    "RAY_AUTH_TOKEN": secrets.token_hex(32),
}
STEPS = 12


@dataclass
class Story:
    """What happened to the sweep, fault by fault."""

    run: RunDir
    sweep: dict
    outputs: dict[str, str] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    killed_trial: dict = field(default_factory=dict)
    sessions: list[str] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    damaged: str = ""
    cut_shard: Path | None = None
    prepared: pa.Table | None = None


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> Story:
    root = tmp_path_factory.mktemp("faults")
    sweep = small_sweep(
        root,
        name="many",
        seeds=[0, 1, 2],
        train={"max_steps": STEPS},
        merge=[{"type": "checkpoint_average", "select": "last", "k": 2}, {"type": "soup"}],
        tracking={"wandb": {"project": "faults"}},
    )
    path = write_sweep(root / "sweep.yaml", sweep)
    told = Story(RunDir(root / "runs" / "many"), sweep)
    run = told.run
    driver = raysoup("run", str(path), "--storage", str(root / "runs"), env=SECRETS)
    first = wait(driver, lambda: next(run.tune.glob("*/attempts.jsonl"), None)).parent

    # The first trial's process, at a random checkpoint of its first attempt: stopped (SIGSTOP)
    # the moment that checkpoint is there, so it cannot train on to its end before the kill (a
    # trial of a few seconds could, and its retry would then have nothing left to do).
    kill_at = random.Random().choice(range(2, STEPS - 2, 2))
    wait(driver, lambda: _newest_step(first) >= kill_at)
    pid = records.read_attempts(first)[0]["pid"]
    os.kill(pid, signal.SIGSTOP)
    at = _newest_step(first)
    _sigkill(pid)
    assert at < STEPS, f"the trial reached its last step ({at}) before it could be killed"
    told.killed_trial = {"folder": first, "pid": pid, "at": at}
    TALLY.injected("trial process SIGKILLed")

    # A second driver of the same sweep, while the first one trains.
    second = raysoup("run", str(path), "--storage", str(root / "runs"), env=SECRETS)
    told.codes["second"], told.outputs["second"] = finish(second, timeout=300)
    assert driver.poll() is None, "the sweep ended before the second driver was refused"
    TALLY.injected("second driver for one run directory")

    # The driver, once evaluation has written its first results.
    wait(driver, lambda: pairs(run.root) >= 1)
    told.sessions.append(kill_driver(driver, run.root))
    told.outputs["run"] = driver.stdout.read()
    told.before = {"trials": done_trials(run.root), "evals": evals_rows(run.root)}
    TALLY.injected("driver killed during evaluation")

    # Tune's newest saved state, cut in half (as a full disk or a kill mid-copy leaves it).
    newest = sorted(run.tune.glob(state.EXPERIMENT))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    told.damaged = newest.name
    TALLY.injected("Tune state cut in half")

    told.codes["resume"], told.outputs["resume"] = finish(
        raysoup("resume", str(run.root), env=SECRETS), timeout=300
    )
    # A prepared training shard, cut in half: the rebuild prepares the data again.
    shard = sorted((run.data / "default" / "train").glob("*.parquet"))[0]
    told.prepared = pq.read_table(run.data / "default" / "train").sort_by("key")
    os.truncate(shard, shard.stat().st_size // 2)
    told.cut_shard = shard
    TALLY.bad_input("prepared data: truncated Parquet shard")
    rebuild = raysoup("resume", str(run.root), "--rebuild-state", env=SECRETS)
    watcher = threading.Thread(target=_record_session, args=(rebuild, run, told), daemon=True)
    watcher.start()
    told.codes["rebuild"], told.outputs["rebuild"] = finish(rebuild, timeout=900)
    watcher.join(timeout=5)
    return told


def _newest_step(folder: Path) -> int:
    done = records.complete_checkpoints([folder])
    return records.checkpoint_info(done[-1])["step"] if done else 0


def _sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def _record_session(proc, run: RunDir, told: Story) -> None:
    """The Ray session of a driver, read from the run's lock while it runs."""
    while proc.poll() is None:
        text = run.lock_file.read_text() if run.lock_file.exists() else ""
        found = json.loads(text).get("ray_session") if text.strip() else None
        if found and found not in told.sessions:
            told.sessions.append(found)
            return
        time.sleep(0.1)


def said(text: str) -> str:
    return " ".join(text.split())


def test_a_second_driver_is_refused_naming_the_first(story):
    assert story.codes["second"] == 1, story.outputs["second"]
    assert "is in use by another raysoup (pid" in said(story.outputs["second"])
    assert "Traceback" not in story.outputs["second"]
    TALLY.survived("second driver for one run directory")


def test_a_damaged_state_is_named_and_the_rebuild_finishes(story):
    out = said(story.outputs["resume"])
    assert story.codes["resume"] == 1, out
    assert f"{story.damaged} cannot be read" in out and "--rebuild-state" in out
    assert story.codes["rebuild"] == 0, story.outputs["rebuild"]
    assert list(story.run.tune.glob(f"{state.ASIDE}*/{story.damaged}"))  # kept, not deleted
    TALLY.survived("Tune state cut in half")


def test_a_truncated_prepared_shard_is_prepared_again_the_same(story):
    out = said(story.outputs["rebuild"])
    assert f"the prepared data in {story.cut_shard.parent} is damaged" in out, out
    assert "preparing the data again" in out
    again = pq.read_table(story.run.data / "default" / "train").sort_by("key")
    assert again.equals(story.prepared)


def test_nothing_finished_was_redone_or_lost(story):
    lost = lost_records(story.run.root, story.before)
    TALLY.lost(lost)
    assert lost == 0
    check_complete(story.run.root)
    assert 0 < len({key[:2] for key in story.before["evals"]}) < 16  # killed mid-evaluation
    TALLY.survived("driver killed during evaluation")


def test_no_output_shows_a_traceback_and_no_ray_process_is_left(story):
    for name, out in story.outputs.items():
        if name != "run":  # the killed driver's output ends wherever the kill cut it
            assert "Traceback" not in out and "ERROR" not in out, f"{name}:\n{out}"
    assert story.sessions[0] and not leftover_processes(story.sessions[0])


def test_the_killed_attempt_is_a_crashed_wandb_run_and_the_resumed_one_finished(story):
    name = records.read_attempts(story.killed_trial["folder"])[0]["name"]
    runs = [run for run in read_runs(story.run.root) if run.name == name]  # in start order
    ends = [(run.summary["raysoup/state"], run.exit_code) for run in runs]
    assert ends == [("crashed", 1), ("finished", 0)]
    assert "died" in runs[0].summary["raysoup/error"].lower()
    others = [r for r in read_runs(story.run.root) if r.job_type == "train" and r.name != name]
    assert {r.summary["raysoup/state"] for r in others} == {"finished"}


def test_the_killed_trial_resumed_from_its_checkpoint_and_matches(story):
    run = story.run
    attempts = records.read_attempts(story.killed_trial["folder"])
    assert [a["pid"] == story.killed_trial["pid"] for a in attempts] == [True, False]
    assert attempts[1]["resumed_from"] == story.killed_trial["at"]
    final = records.complete_checkpoints([story.killed_trial["folder"]])[-1]
    name = attempts[0]["name"]
    seed = int(name.rsplit("s", 1)[1])
    spec = TrialSpec(parse_sweep(story.sweep), str(run.model), run.data / "default", None, seed)
    alone = _Kept(run.root.parent / "reference")
    train(spec, alone)
    info = records.checkpoint_info(final)
    for key in ("train_loss", "eval_loss", "tokens_seen", "examples_seen", "step"):
        assert info[key] == pytest.approx(alone.last[key], abs=1e-5), key
    ours, reference = (
        load_file(final / "model.safetensors"),
        load_file(alone.checkpoint / "model.safetensors"),
    )
    assert max(float((ours[k] - reference[k]).abs().max()) for k in ours) <= 1e-5
    TALLY.survived("trial process SIGKILLed")


class _Kept:
    """A `Session` for the uninterrupted reference run: keeps the last report and checkpoint."""

    def __init__(self, root: Path) -> None:
        root.mkdir(exist_ok=True)
        self.root, self.last, self.checkpoint = root, {}, None

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        self.last = dict(metrics)
        if checkpoint is not None:
            self.checkpoint = self.root / f"step{metrics['step']}"
            checkpoint.rename(self.checkpoint)

    def restore_dir(self) -> Path | None:
        return None


def test_secrets_appear_nowhere(story):
    """Not in the run directory (tables, checkpoints, model cards, Tune's files), not in the
    Ray session folders of the drivers, not in anything printed."""
    markers = [value.encode() for value in SECRETS.values()]
    places = [story.run.root, *(Path(s) for s in story.sessions if s)]
    found = []
    for place in places:
        for path in place.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = _read(path)
                found += [f"{path}: {m.decode()[:8]}..." for m in markers if m in data]
    for name, out in story.outputs.items():
        found += [f"output of {name}" for m in markers if m.decode() in out]
    assert not found, found
    assert list(story.run.merges.rglob("README.md"))  # the model cards were looked at
    TALLY.injected("secrets in the environment", len(SECRETS))
    TALLY.survived("secrets in the environment", len(SECRETS))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
