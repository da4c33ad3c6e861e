"""Trials on worker groups, on a real local Ray cluster of 2 CPUs: two-worker DDP and DeepSpeed
ZeRO-2 and ZeRO-3 trials (gloo on CPU) through the whole pipeline, their checkpoints against a
single-process trial on the same global batch, exact resume, failures, placement groups."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import engine
from engine.core.models import base_model_path
from engine.core.rundir import RunDir
from engine.train import records
from engine.train.loop import TrialSpec, train
from engine.train.stops import LIVE, GroupStops, StopSeen, end_groups, group_key, running
from engine.train.workers import WORKERS_FILE, run_workers
from sweeps import parse_sweep
from tests.conftest import DEMO_DATA
from tests.failing import FAILS_ON_WORDS
from tests.test_train_loop import RecordingSession

pytestmark = pytest.mark.usefixtures("ray_local")

STEPS, EVERY, BATCH = 4, 2, 4  # per worker: a global batch of 8 examples on two workers


def group_sweep(name: str, **extra) -> dict:
    sweep = {
        "name": name,
        "model": {"preset": "tiny-random"},
        "finetune": {"method": "full", "lora": {"r": 4, "alpha": 8}},
        "data": {
            "train": str(DEMO_DATA / "add" / "train.jsonl"),
            "eval": str(DEMO_DATA / "add" / "eval.jsonl"),
            "format": "prompt_completion",
        },
        "evaluate": {"rank_by": "accuracy", "batch_size": 8},
        "train": {
            "lr": 3e-3,
            "max_steps": STEPS,
            "batch_size": BATCH,
            "seq_len": 24,
            "eval_every": EVERY,
        },
        "data_scale": [40],
        "seeds": [0],
        "checkpoint": {"every": EVERY, "keep": None},
        # 2 workers of half a CPU, plus the trial's own token share: one group at a time
        "resources": {"workers": 2, "cpus_per_worker": 0.5, "max_failures": 0},
    }
    sweep.update(extra)
    return sweep


def weights(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for shard in sorted(folder.glob("*.safetensors")):
        found.update(load_file(shard))
    return found


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert sorted(a) == sorted(b)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def ddp(storage):
    """Full and LoRA two-worker trials (two groups for a cluster that holds one at a time),
    with checkpoint averages of each."""
    sweep = group_sweep(
        "ddp",
        finetune={"method": {"grid": ["full", "lora"]}, "lora": {"r": 4, "alpha": 8}},
        merge=[{"type": "checkpoint_average"}],
    )
    return engine.run(parse_sweep(sweep), storage=str(storage), progress=False)


@pytest.fixture(scope="module")
def zero2(storage):
    sweep = group_sweep("zero2", deepspeed={"stage": 2})
    return engine.run(parse_sweep(sweep), storage=str(storage), progress=False)


def full_trial(result):
    trials = result.trials
    if "finetune.method" in trials:
        trials = trials[trials["finetune.method"] == "full"]
    return trials.iloc[0]


def test_two_worker_trials_run_the_whole_pipeline(ddp):
    trials = ddp.trials.set_index("finetune.method")
    assert set(trials["status"]) == {"done"}, trials["error"].tolist()
    assert (trials["steps"] == STEPS).all() and (trials["workers"] == 2).all()
    for method, row in trials.iterrows():
        folder = Path(row["checkpoint"])
        group = json.loads((folder.parent / WORKERS_FILE).read_text())
        assert [w["rank"] for w in group] == [0, 1] and len({w["pid"] for w in group}) == 2
        # the same files as a single-process trial: the adapter only for LoRA
        names = {p.name for p in folder.iterdir()}
        expected = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
        assert expected in names and not (names & {"deepspeed", "zero_to_fp32.py"})
    merges = ddp.merges
    assert len(merges) == 2 and set(merges["status"]) == {"done"}, merges["error"].tolist()
    board = ddp.candidates()
    assert set(merges["candidate"]) | set(ddp.trials["name"]) <= set(board["candidate"])
    assert board["selection"].notna().all()


def test_no_placement_group_is_left_after_the_sweeps(ddp, zero2):
    import ray

    states = [pg["state"] for pg in ray.util.placement_group_table().values()]
    assert states and set(states) == {"REMOVED"}


def trial_spec(run: RunDir, sweep, row) -> TrialSpec:
    """The spec of the trial of `row` (its task, data size, seed), trained as `sweep` says."""
    return TrialSpec(
        sweep=sweep,
        model_path=base_model_path(sweep, run.model),
        data_dir=run.data / row["task"],
        data_size=int(row["data_size"]),
        seed=int(row["seed"]),
        task=row["task"],
        name=row["name"],
    )


def test_two_workers_reach_the_loss_of_one_process_on_the_same_global_batch(ddp, tmp_path):
    """A single process with batch 2 x 4 trains on the same examples at each step; with the
    loss weighted by labelled tokens across ranks, both take the same steps."""
    row = full_trial(ddp)
    run = RunDir(Path(ddp.run_dir))
    sweep = run.load_sweep()
    one = sweep.model_copy(
        update={
            "resources": sweep.resources.model_copy(update={"workers": 1}),
            "train": sweep.train.model_copy(update={"batch_size": 2 * BATCH}),
            "finetune": sweep.finetune.model_copy(update={"method": "full"}),
        }
    )
    spec = trial_spec(run, one, row)
    session = RecordingSession(tmp_path)
    last = train(spec, session)
    assert last["examples_seen"] == row["examples_seen"] == STEPS * 2 * BATCH
    assert last["eval_loss"] == pytest.approx(row["eval_loss"], abs=1e-4)
    assert last["train_loss"] == pytest.approx(row["train_loss"], abs=1e-4)
    assert_close(weights(session.checkpoints[-1]), weights(Path(row["checkpoint"])), atol=1e-4)


def test_zero2_checkpoints_read_like_any_other_and_match_ddp(ddp, zero2):
    row = full_trial(zero2)
    assert row["status"] == "done", row["error"]
    folder = Path(row["checkpoint"])
    assert (folder / "model.safetensors").is_file() and (folder / "deepspeed").is_dir()
    assert not list(folder.glob("zero_to_*.py"))  # no code in a checkpoint
    # the marker covers DeepSpeed's shards too: a missing one makes the checkpoint incomplete
    marker = records.marker(folder)
    assert any(name.startswith("deepspeed/") for name in marker["files"])
    assert_close(weights(folder), weights(Path(full_trial(ddp)["checkpoint"])), atol=1e-4)
    assert row["name"] in set(zero2.evals["candidate"])


# Slow (about 25 s on 2 cores, a worker group of its own): the suite keeps to its time on every
# CI run; the exact resume of single-process trials runs there (tests/test_train_loop.py).
@pytest.mark.slow
def test_resuming_a_zero2_trial_from_its_checkpoint_continues_exactly(zero2, tmp_path):
    row = full_trial(zero2)
    run = RunDir(Path(zero2.run_dir))
    sweep = run.load_sweep()
    first = sorted(Path(c) for c in row["checkpoints"])[0]
    assert records.checkpoint_info(first)["step"] == EVERY
    spec = trial_spec(run, sweep, row)
    again = tmp_path / "again"
    run_workers(spec, again, None, first, tmp_path / "groups", in_tune=False)
    resumed = records.complete_checkpoints([again])
    assert [records.checkpoint_info(c)["step"] for c in resumed] == [STEPS]
    assert_close(weights(resumed[-1]), weights(Path(row["checkpoint"])), atol=1e-6)
    info = records.checkpoint_info(resumed[-1])
    assert info["eval_loss"] == pytest.approx(row["eval_loss"], abs=1e-6)
    assert info["tokens_seen"] == row["tokens_seen"]


# Slow (about 50 s on 2 cores, a sweep of its own): ZeRO-2 runs the whole pipeline on every CI
# run above; ZeRO-3's gathered shards with --runslow.
@pytest.mark.slow
def test_zero3_writes_gathered_safetensors_shards(ddp, storage):
    result = engine.run(
        parse_sweep(group_sweep("zero3", deepspeed={"stage": 3})),
        storage=str(storage),
        progress=False,
    )
    row = full_trial(result)
    assert row["status"] == "done", row["error"]
    folder = Path(row["checkpoint"])
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    found = weights(folder)
    assert set(index["weight_map"]) == set(found)
    assert all(t.numel() > 0 for t in found.values())  # no empty Size([0]) tensors
    assert_close(found, weights(Path(full_trial(ddp)["checkpoint"])), atol=1e-4)


# Slow (over a minute on 2 cores): a failed trial's row and its siblings finishing run on every
# CI run in test_sweep_run.py for single-process trials; this one, for worker groups, with
# --runslow.
@pytest.mark.slow
def test_a_failed_worker_group_fails_its_trial_only_and_frees_its_workers(storage):
    import ray

    sweep = group_sweep("fails", data_scale=None, metric=FAILS_ON_WORDS)
    sweep["tasks"] = {
        task: {split: str(DEMO_DATA / task / f"{split}.jsonl") for split in ("train", "eval")}
        for task in ("add", "reverse")
    }
    sweep["data"] = {"format": "prompt_completion"}
    sweep["train"].update(max_steps=2, eval_every=2)
    result = engine.run(parse_sweep(sweep), storage=str(storage), progress=False)
    status = dict(zip(result.trials["task"], result.trials["status"]))
    assert status == {"add": "done", "reverse": "error"}
    assert "fails on word answers" in result.trials.set_index("task").loc["reverse", "error"]
    states = {pg["state"] for pg in ray.util.placement_group_table().values()}
    assert states == {"REMOVED"}


@pytest.mark.slow  # about 100 s on 2 cores: a ten-step group trial, its retry, and a reference
def test_a_killed_worker_fails_its_group_and_the_trial_resumes_exactly(storage, tmp_path):
    """SIGKILL one rank of a ZeRO-2 group once a checkpoint exists: the group fails, Tune
    retries the trial from its newest complete checkpoint (DeepSpeed's state restored), and
    it ends with the weights of the same trial run without a fault."""
    sweep = group_sweep(
        "killed",
        deepspeed={"stage": 2},
        checkpoint={"every": 2, "keep": 2},
    )
    sweep["resources"]["max_failures"] = 1
    sweep["train"].update(max_steps=10, eval_every=2)
    del sweep["evaluate"], sweep["data"]["eval"]  # training only: no evaluation stage
    tune_dir = storage / "killed" / "tune"
    killed: dict = {}

    def killer() -> None:
        def progressed():
            for folder in tune_dir.glob("*/attempts.jsonl"):
                done = records.complete_checkpoints([folder.parent])
                if done and (folder.parent / WORKERS_FILE).is_file():
                    return folder.parent, records.checkpoint_info(done[-1])["step"]
            return None

        folder, at = wait_for(progressed)
        placed = json.loads((folder / WORKERS_FILE).read_text())
        os.kill(placed[1]["pid"], signal.SIGKILL)
        killed.update(pid=placed[1]["pid"], at=at)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = engine.run(parse_sweep(sweep), storage=str(storage), progress=False)
    thread.join(timeout=5)
    assert killed, "the trial ended before a worker could be killed"
    row = result.trials.iloc[0]
    assert row["status"] == "done" and row["attempts"] == 2, row.to_dict()
    attempts = records.read_attempts(Path(row["path"]))
    # rank 0 may publish the checkpoint whose barrier the killed rank had passed
    assert attempts[1]["resumed_from"] in (killed["at"], killed["at"] + 2)

    run = RunDir(Path(result.run_dir))
    alone = tmp_path / "alone"
    spec = trial_spec(run, run.load_sweep(), row)
    run_workers(spec, alone, None, None, tmp_path / "g", in_tune=False)
    reference = records.complete_checkpoints([alone])[-1]
    assert_close(weights(Path(row["checkpoint"])), weights(reference), atol=1e-5)
    info = records.checkpoint_info(Path(row["checkpoint"]))
    assert info["tokens_seen"] == records.checkpoint_info(reference)["tokens_seen"]


def test_a_stop_reaches_its_own_group_only_and_the_trial_waits_for_its_group():
    stops = GroupStops.remote()
    first, again = group_key("t1"), group_key("t1")  # two starts of one trial's group
    seen, seen_again = StopSeen(stops, first), StopSeen(stops, again)
    steps = []

    def fit() -> None:  # the trial's thread, waiting on a group that trains until stopped
        with running(stops, first):
            while not seen():
                time.sleep(0.01)
            time.sleep(0.2)  # the group's end
            steps.append("ended")

    thread = threading.Thread(target=fit)
    thread.start()
    wait_for(lambda: stops_live())
    end_groups()  # what the trainable's cleanup does when Tune stops the trial
    assert steps == ["ended"] and not stops_live()
    assert not seen_again()
    thread.join()


def stops_live() -> bool:
    return bool(LIVE)


# Slow (about 2 minutes on 2 cores: three worker groups started one after another); ASHA's
# stops of one-process trials run on every CI run in test_schedulers.py.
@pytest.mark.slow
def test_asha_stops_worker_group_trials_and_each_stopped_group_ends(storage):
    """One learning rate that learns and two that barely move the model, one group at a time:
    ASHA stops the two at a rung, each stopped trial's result is its checkpoint at the stop
    (a later one its group saved before it ended does not count), the sweep ends (a stopped
    group that kept waiting on Tune would hold the cluster forever), and the stopped groups'
    processes and placement groups are gone."""
    import ray

    sweep = group_sweep(
        "asha",
        train={
            "lr": {"grid": [3e-3, 1e-7, 2e-7]},
            "max_steps": 6,
            "batch_size": BATCH,
            "seq_len": 24,
            "eval_every": EVERY,
        },
        scheduler={"type": "asha", "grace_period": EVERY, "reduction_factor": 2},
    )
    result = engine.run(parse_sweep(sweep), storage=str(storage), progress=False)
    trials = result.trials.set_index("train.lr")
    assert trials.loc[3e-3, "status"] == "done", trials["error"].tolist()
    stopped = trials.loc[[1e-7, 2e-7]]
    assert set(stopped["status"]) == {"stopped"} and set(stopped["stopped_by"]) == {"asha"}
    for row in stopped.itertuples():
        assert row.stopped_at < 6 and row.steps == row.stopped_at
        assert records.checkpoint_info(Path(row.checkpoint))["step"] == row.stopped_at
    assert result.candidates()["selection"].notna().all()  # stopped trials evaluated too
    states = {pg["state"] for pg in ray.util.placement_group_table().values()}
    assert states == {"REMOVED"}
    pids = [w["pid"] for row in stopped.itertuples() for w in group_of(row.path)]
    assert wait_for(lambda: not any(alive(pid) for pid in pids), timeout=60)


def group_of(trial_path: str) -> list[dict]:
    return json.loads((Path(trial_path) / WORKERS_FILE).read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(found, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := found():
            return result
        time.sleep(0.05)
    raise TimeoutError(f"nothing happened within {timeout} s")


# Slow (a few minutes on 2 cores: two groups at once, each started twice): the pause itself
# is tested on every run (`tests/test_trial_records.py`), PBT's clone on one-process trials
# (`tests/test_pbt.py`).
@pytest.mark.slow
def test_pbt_pauses_worker_group_trials_and_the_clone_continues_from_its_source(storage, tmp_path):
    """Two two-worker trials at once (workers of 0.45 CPU), compared at step 6 (synchronous
    PBT pauses both there): the worse clones the better's checkpoint of step 6 and trains on
    from it, the better continues from its own step 6, whatever its group saved after."""
    import ray

    interval, steps, good, bad = 6, 10, 3e-3, 1e-7
    sweep = group_sweep(
        "pbt",
        train={
            "lr": {"grid": [good, bad]},
            "max_steps": steps,
            "batch_size": BATCH,
            "seq_len": 24,
            "eval_every": EVERY,
        },
        resources={"workers": 2, "cpus_per_worker": 0.45, "max_failures": 0},
        scheduler={
            "type": "pbt",
            "perturbation_interval": interval,
            "quantile_fraction": 0.5,
            "resample_probability": 0.0,
            "synch": True,
            "mutations": {"train.lr": {"loguniform": [1e-7, 1e-2]}},
        },
    )
    result = engine.run(parse_sweep(sweep), storage=str(storage), progress=False)
    trials = result.trials.set_index("name")
    assert set(trials["status"]) == {"done"}, trials["error"].tolist()
    (clone,) = [name for name, made in trials["cloned"].items() if len(made)]
    (source,) = set(trials.index) - {clone}
    assert list(trials.loc[clone, "cloned"]) == [f"{source}@{interval}"]
    run = RunDir(Path(result.run_dir))
    for name in (clone, source):
        folders = records.trial_folders(run.tune, name)
        attempts = [a for f in folders for a in records.read_attempts(f)]
        pause = json.loads((folders[-1] / records.PAUSED).read_text())
        assert pause["step"] == interval
        assert attempts[-1]["pause"] == pause["id"] and attempts[-1]["resumed_from"] == interval
        assert all(step > interval for step in attempts[-1]["discarded"])
        kept = [records.checkpoint_info(c)["step"] for c in records.complete_checkpoints(folders)]
        assert kept == ([8, 10] if name == clone else [2, 4, 6, 8, 10])
    # the clone trained on from the source's step 6 with its own rate: one process on the
    # same global batch takes the same steps
    row = trials.loc[clone]
    at_clone = [
        c
        for c in records.complete_checkpoints(records.trial_folders(run.tune, source))
        if records.checkpoint_info(c)["step"] == interval
    ][0]
    attempt = records.read_attempts(records.trial_folders(run.tune, clone)[-1])[-1]
    one = run.load_sweep().for_trial(attempt["cell"]["config"]["values"])
    one = one.model_copy(
        update={
            "resources": one.resources.model_copy(update={"workers": 1}),
            "train": one.train.model_copy(update={"batch_size": 2 * BATCH}),
        }
    )
    session = RecordingSession(tmp_path, restore=at_clone)
    train(trial_spec(run, one, {**row, "name": clone}), session)
    assert_close(weights(session.checkpoints[-1]), weights(Path(row["checkpoint"])), atol=1e-4)
    assert {pg["state"] for pg in ray.util.placement_group_table().values()} == {"REMOVED"}


# Slow (about 3 minutes on 2 cores: two groups at once, each started again after a pause).
@pytest.mark.slow
def test_bohb_pauses_worker_group_trials_at_its_budgets_and_the_survivor_continues(storage):
    """BOHB over two points of two-worker trials (two groups at once), budgets 1, 2 and 4
    steps: every start after a pause continues from the checkpoint of the budget it was
    paused at (whatever its group saved after), the trial HyperBand stops has its checkpoint
    at the stop as its result, and the other trains to the end."""
    import ray

    sweep = group_sweep(
        "bohb",
        train={
            "lr": {"loguniform": [1e-7, 3e-3]},
            "max_steps": 4,
            "batch_size": BATCH,
            "seq_len": 24,
            "eval_every": 1,
        },
        checkpoint={"every": 1, "keep": None},
        resources={"workers": 2, "cpus_per_worker": 0.45, "max_failures": 0},
        num_samples=2,
        search={"type": "bohb", "seed": 0},
        scheduler={"type": "hyperband", "reduction_factor": 2},
    )
    result = engine.run(parse_sweep(sweep), storage=str(storage), progress=False)
    trials = result.trials.set_index("name")
    assert sorted(trials["status"]) == ["done", "stopped"], trials["error"].tolist()
    starts = [records.read_attempts(Path(path)) for path in trials["path"]]
    assert any(len(attempts) >= 2 for attempts in starts)  # at least one was paused and went on
    for (_, trial), attempts in zip(trials.iterrows(), starts):
        for attempt in attempts[1:]:  # each start after the first continued from a pause
            assert attempt["pause"] and attempt["resumed_from"] in (1, 2)
            assert all(step > attempt["resumed_from"] for step in attempt["discarded"])
        last = 4 if trial["status"] == "done" else trial["stopped_at"]
        kept = [records.checkpoint_info(Path(c))["step"] for c in trial["checkpoints"]]
        assert kept == list(range(1, int(last) + 1)) and trial["steps"] == last
    stopped = trials[trials["status"] == "stopped"].iloc[0]
    assert stopped["stopped_by"] == "hyperband" and stopped["stopped_at"] in (1, 2)
    assert {pg["state"] for pg in ray.util.placement_group_table().values()} == {"REMOVED"}
