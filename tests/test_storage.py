"""Run directories on object storage, against a real S3-compatible server on loopback (moto's
server mode, started and killed by the module's fixture): the storage layer's rules, then a
sweep with merges and evaluation written to `s3://`, killed, resumed on an empty cache (as from
another machine) and reported from a third."""

from __future__ import annotations

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
from tests.s3_server import s3_server

BIN = Path(sys.executable).parent
BUCKET = "sweeps"
SECRET = "s3cr3t-never-written-anywhere"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on loopback with the bucket made; the environment points at it."""
    with s3_server(BUCKET, SECRET, tmp_path_factory.mktemp("cache")) as env:
        yield env


def objects(prefix: str = "") -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3")
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):
                continue  # the empty marker pyarrow keeps for a folder it emptied
            found[item["Key"]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return found


# -- the storage layer ---------------------------------------------------------------------


def test_a_folder_is_uploaded_whole_with_its_marker_last_and_fetched_elsewhere(s3, tmp_path):
    from engine.core import storage

    copy = storage.local_copy(f"s3://{BUCKET}/unit/run") / "tune" / "t1" / "checkpoint_000004"
    copy.mkdir(parents=True)
    (copy / "model.safetensors").write_bytes(b"w" * 1000)
    (copy / "config.json").write_text("{}")
    (copy / "complete.json").write_text('{"files": {"model.safetensors": 1000}}')
    (copy / ".partial-leftover").write_text("never uploaded")
    storage.upload(copy, last="complete.json")
    found = objects("unit/run/tune/t1/checkpoint_000004/")
    assert sorted(k.rsplit("/", 1)[1] for k in found) == [
        "complete.json",
        "config.json",
        "model.safetensors",
    ]

    # Another machine: its copy is empty. A pull leaves the weights on storage and says so.
    other = tmp_path / "other"
    os.environ["RAYSOUP_CACHE"] = str(other)
    try:
        run = storage.Remote.of(storage.local_copy(f"s3://{BUCKET}/unit/run"))
        storage.pull(run)
        there = storage.local_copy(f"s3://{BUCKET}/unit/run") / "tune/t1/checkpoint_000004"
        assert there.is_relative_to(other)
        assert (there / "config.json").read_text() == "{}"
        assert not (there / "model.safetensors").exists()
        assert storage.size(there / "model.safetensors") == 1000  # counted as there
        storage.fetch(there)
        assert (there / "model.safetensors").read_bytes() == b"w" * 1000
        assert not (there / storage.REMOTE_FILES).exists()

        # Pruned on storage by a trial elsewhere: the pulled copy goes too at the next pull.
        storage.delete(there)
        assert not objects("unit/run/tune/t1/")
        storage.pull(run)
        assert not (there / "config.json").exists()
    finally:
        os.environ["RAYSOUP_CACHE"] = s3["RAYSOUP_CACHE"]


def test_push_uploads_what_changed_and_pull_keeps_what_the_driver_changed(s3):
    from engine.core import storage

    root = storage.local_copy(f"s3://{BUCKET}/unit/push")
    root.mkdir(parents=True)
    remote = storage.Remote.of(root)
    (root / "trials.parquet").write_bytes(b"one")
    (root / "tune").mkdir()
    (root / "tune" / "experiment_state.json").write_text("{}")
    owned = lambda rel: not rel.startswith("merges/")  # noqa: E731
    (root / "merges" / "soup").mkdir(parents=True)
    (root / "merges" / "soup" / "config.json").write_text("{}")
    assert storage.push(remote, owned) == 2
    assert storage.push(remote, owned) == 0  # nothing changed
    (root / "trials.parquet").write_bytes(b"two!")
    assert storage.push(remote, owned) == 1
    assert objects("unit/push/trials.parquet")["unit/push/trials.parquet"] == b"two!"
    assert "unit/push/merges/soup/config.json" not in objects("unit/push/")
    # A newer version on storage than this copy last saw, of a file unchanged here: pulled.
    # A file changed here since: kept, to be pushed.
    import boto3

    boto3.client("s3").put_object(Bucket=BUCKET, Key="unit/push/trials.parquet", Body=b"three")
    (root / "tune" / "experiment_state.json").write_text('{"newer": 1}')
    boto3.client("s3").put_object(
        Bucket=BUCKET, Key="unit/push/tune/experiment_state.json", Body=b"{}  "
    )
    storage.pull(remote)
    assert (root / "trials.parquet").read_bytes() == b"three"
    assert (root / "tune" / "experiment_state.json").read_text() == '{"newer": 1}'


def test_the_cache_limit_evicts_fetched_weights_least_recently_used_never_held_ones(
    s3, tmp_path, monkeypatch
):
    from engine.core import storage
    from engine.core.errors import RunError

    writer = storage.local_copy(f"s3://{BUCKET}/unit/limit")
    for name in ("a", "b", "c"):
        folder = writer / "tune" / "t" / f"checkpoint_00000{ord(name) - 96}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(name.encode() * 1000)
        (folder / "config.json").write_text("{}")
        storage.upload(folder)
    monkeypatch.setenv("RAYSOUP_CACHE", str(tmp_path / "reader"))
    monkeypatch.setenv("RAYSOUP_CACHE_LIMIT", "2.5 KB")
    assert storage.cache_limit() == 2500
    copy = storage.local_copy(f"s3://{BUCKET}/unit/limit") / "tune" / "t"
    a, b, c = (copy / f"checkpoint_00000{i}" for i in (1, 2, 3))
    storage.fetch(a)
    time.sleep(0.05)
    storage.fetch(b)
    time.sleep(0.05)
    storage.fetch(a)  # used again: b is now the least recently used
    time.sleep(0.05)
    storage.fetch(c)  # 3,000 bytes of weights do not fit in 2,500: b goes
    assert (a / "model.safetensors").is_file() and (c / "model.safetensors").is_file()
    assert not (b / "model.safetensors").exists()
    assert storage.size(b / "model.safetensors") == 1000  # still complete: on storage
    assert (b / "config.json").is_file()  # only weights are evicted
    with storage.fetched(b):  # back; a (least recently used) goes
        assert (b / "model.safetensors").read_bytes() == b"b" * 1000
        assert not (a / "model.safetensors").exists()
        # Held: fetching a again cannot evict b, so c goes, though b is older.
        storage.fetch(a)
        assert (b / "model.safetensors").is_file() and (a / "model.safetensors").is_file()
        assert not (c / "model.safetensors").exists()
    monkeypatch.setenv("RAYSOUP_CACHE_LIMIT", "lots")
    with pytest.raises(RunError, match="RAYSOUP_CACHE_LIMIT='lots' is not a size"):
        storage.cache_limit()


def test_resuming_a_uri_that_holds_no_run_directory_says_so(s3):
    from engine.runner import resume
    from sweeps import SweepError

    with pytest.raises(SweepError, match=f"s3://{BUCKET}/nothing/here: not a run directory"):
        resume(f"s3://{BUCKET}/nothing/here", progress=False)


def test_a_storage_uri_raysoup_cannot_use_is_refused_naming_it():
    from engine.core.rundir import RunDir
    from sweeps import SweepError

    for bad in ("ftp://host/runs", "s3:///no-bucket", "abfs://c@acct.dfs.core.windows.net/x"):
        with pytest.raises(SweepError, match="s3://bucket/prefix"):
            RunDir.at(bad)


# -- a sweep on s3:// ----------------------------------------------------------------------

SWEEP = {
    "name": "on-s3",
    "model": {"preset": "tiny-random"},
    "data": {
        "train": str(DEMO_DATA / "add" / "train.jsonl"),
        "eval": str(DEMO_DATA / "add" / "eval.jsonl"),
        "format": "prompt_completion",
    },
    "train": {
        "lr": {"grid": [1e-3, 3e-3]},
        "max_steps": 8,
        "batch_size": 8,
        "seq_len": 24,
        "eval_every": 4,
    },
    "checkpoint": {"every": 4, "keep": 1},
    "resources": {"max_concurrent": 1},
    "merge": [{"type": "soup", "method": "uniform", "across": ["train.lr"], "name": "all"}],
    "evaluate": {"batch_size": 8},
}


def _raysoup(env: dict, cache: Path, *args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=REPO,
        env={**os.environ, **env, "RAYSOUP_CACHE": str(cache), "TUNE_GLOBAL_CHECKPOINT_S": "0.5"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _complete_checkpoints(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2")
    return [
        item["Key"]
        for page in pages.paginate(Bucket=BUCKET, Prefix=prefix)
        for item in page.get("Contents", [])
        if item["Key"].endswith("/checkpoint_000008/complete.json")
    ]


@pytest.mark.ray
def test_a_sweep_on_s3_is_killed_resumed_from_another_machine_and_reported(s3, tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(SWEEP))
    uri = f"s3://{BUCKET}/team/runs/on-s3"
    driver = _raysoup(
        s3,
        tmp_path / "cache-a",
        "run",
        str(sweep_file),
        "--storage",
        f"s3://{BUCKET}/team/runs",
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None:
        if _complete_checkpoints("team/runs/on-s3/tune/"):
            break
        time.sleep(0.3)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    finished = _complete_checkpoints("team/runs/on-s3/tune/")
    assert len(finished) == 1, driver.stdout.read()
    # What a killed merge leaves: files under the candidate's prefix, and no record.
    import boto3

    client = boto3.client("s3")
    client.put_object(Bucket=BUCKET, Key="team/runs/on-s3/merges/all/s0/stale.bin", Body=b"x")

    # Another machine: an empty cache, only the URI.
    resumed = _raysoup(s3, tmp_path / "cache-b", "resume", uri)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    stored = objects("team/runs/on-s3/")
    rel = {k.removeprefix("team/runs/on-s3/"): v for k, v in stored.items()}
    trials = pd.read_parquet(tmp_path / "cache-b/s3/sweeps/team/runs/on-s3/trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"done"}, trials["error"].tolist()
    # The finished trial was not trained again: one attempt in its folder.
    first = finished[0].split("/")[4]
    assert rel[f"tune/{first}/attempts.jsonl"].count(b"\n") == 1
    # Every trial's last checkpoint is on storage, complete; nothing hidden was uploaded.
    assert len(_complete_checkpoints("team/runs/on-s3/tune/")) == 2
    assert not [k for k in rel if any(p.startswith(".") for p in k.split("/"))]
    # The merge replaced what the killed one left, and its record came with it.
    assert "merges/all/s0/stale.bin" not in rel
    assert "merges/all/s0.json" in rel and "merges/all/s0/recipe.yaml" in rel
    assert {"trials.parquet", "merges.parquet", "evals.parquet", "report.html"} <= set(rel)
    evals = pd.read_parquet(tmp_path / "cache-b/s3/sweeps/team/runs/on-s3/evals.parquet")
    assert set(evals["candidate"]) >= {"base", "all/s0"} and evals["error"].isna().all()
    assert not [k for k, v in rel.items() if SECRET.encode() in v]  # no key written

    # A third machine reports it from storage alone.
    client.delete_object(Bucket=BUCKET, Key="team/runs/on-s3/report.html")
    report = _raysoup(s3, tmp_path / "cache-c", "report", uri)
    out, _ = report.communicate(timeout=120)
    assert report.returncode == 0, out
    assert "all/s0" in out and f"Run directory: {uri}" in " ".join(out.split())
    assert "team/runs/on-s3/report.html" in objects("team/runs/on-s3/report.html")
    # The weights of checkpoints and merges stayed on storage: the report needed none.
    copy = tmp_path / "cache-c/s3/sweeps/team/runs/on-s3"
    assert not list((copy / "tune").rglob("*.safetensors"))
    assert not list((copy / "merges").rglob("*.safetensors"))
    assert (copy / "merges/all/s0/config.json").is_file()


# -- two nodes, each with its own cache ----------------------------------------------------


@pytest.fixture(scope="module")
def two_caches(s3, tmp_path_factory):
    """A Ray cluster of two nodes of one CPU each whose processes keep their copies of run
    directories in different cache folders: the head's (this process's `RAYSOUP_CACHE`) and
    the second node's, so what one node writes reaches the other only through storage."""
    import ray
    from ray.cluster_utils import Cluster

    second = tmp_path_factory.mktemp("cache-second")
    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    node = cluster.add_node(num_cpus=1, env_vars={"RAYSOUP_CACHE": str(second)})
    cluster.wait_for_nodes()
    yield node, Path(s3["RAYSOUP_CACHE"]), second
    ray.shutdown()
    cluster.shutdown()


# Slow (about 40 s on 2 cores with its cluster): a sweep on S3 end to end (killed, resumed
# elsewhere, reported) runs on every CI run above, and trials on other nodes in
# tests/faults/test_node_loss.py; two nodes with separate caches with --runslow.
@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_on_s3_runs_on_two_nodes_that_share_no_disk_folder(two_caches, tmp_path):
    import shutil

    import engine
    from engine.submit.inputs import stage_inputs
    from sweeps import load_sweep
    from tests import rendezvous

    node, head_cache, second_cache = two_caches
    sweep = {
        **SWEEP,
        "name": "two-nodes",
        "train": {**SWEEP["train"], "lr": 2e-3, "max_steps": 40, "eval_every": 40},
        "checkpoint": {"every": 20, "keep": 1},
        "seeds": [0, 1],
        "resources": {"cpus_per_trial": 1, "max_failures": 0},
        "merge": [{"type": "soup", "method": "uniform", "across": ["seed"], "name": "seeds"}],
        # Each trial waits at its first score for the other: one node's CPU each, at once.
        "metric": "tests.rendezvous:together",
    }
    # As a submitted job runs it: its data files staged into the run directory's inputs/, and
    # read from storage by Ray Data's tasks, wherever they run.
    for split in ("train", "eval"):
        shutil.copy(DEMO_DATA / "add" / f"{split}.jsonl", tmp_path / f"{split}.jsonl")
    sweep["data"] = {**sweep["data"], "train": "train.jsonl", "eval": "eval.jsonl"}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    storage_ = f"s3://{BUCKET}/nodes"
    staged = stage_inputs(tmp_path / "sweep.yaml", load_sweep(tmp_path / "sweep.yaml"), storage_)
    assert staged.data.train.startswith(str(head_cache))
    try:
        result = engine.run(staged, storage=storage_, progress=False)
    finally:
        shutil.rmtree(rendezvous.ROOT, ignore_errors=True)
    trials = result.trials
    assert list(trials["status"]) == ["done", "done"], trials["error"].tolist()
    assert trials["node_id"].nunique() == 2  # one trial on each node
    assert list(result.merges["status"]) == ["done"], result.merges["error"].tolist()
    assert result.evals["error"].isna().all()
    assert set(result.evals["candidate"]) == {"base", *trials["name"], "seeds/all"}
    run = "s3/sweeps/nodes/two-nodes"
    elsewhere = trials[trials["node_id"] == node.node_id].iloc[0]
    folder = Path(elsewhere["checkpoint"]).relative_to(head_cache / run)
    # The second node's trial wrote into the second node's cache, and read its data there.
    assert (second_cache / run / folder / "model.safetensors").is_file()
    assert list((second_cache / run / "data").rglob("*.parquet"))
    # Storage holds every trial's checkpoint, complete, and the merged model.
    stored = objects("nodes/two-nodes/")
    for path in trials["checkpoint"]:
        rel = Path(path).relative_to(head_cache / run)
        assert f"nodes/two-nodes/{rel}/complete.json" in stored
        assert f"nodes/two-nodes/{rel}/model.safetensors" in stored
    assert "nodes/two-nodes/merges/seeds/all.json" in stored
    assert "nodes/two-nodes/inputs/train.jsonl" in stored
