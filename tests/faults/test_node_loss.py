"""A node removed mid-sweep (`ray.cluster_utils.Cluster`, two nodes of one CPU): the trial it
ran is retried on the node that is left, from its newest complete checkpoint."""

from __future__ import annotations

import threading
from pathlib import Path

import psutil
import pytest
import ray

import engine
from engine.train import records
from sweeps import parse_sweep
from tests.faults.conftest import small_sweep
from tests.faults.helpers import wait

pytestmark = pytest.mark.ray


class _Running:
    """Stands in for a driver process in `wait`: alive until the sweep returns."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def poll(self):
        return 0 if self.done.is_set() else None


def test_a_removed_nodes_trial_is_retried_elsewhere(two_nodes, tmp_path, tally):
    cluster, worker = two_nodes
    raylet = worker.all_processes["raylet"][0].process.pid
    sweep = small_sweep(tmp_path, name="nodes", seeds=[0, 1], train={"max_steps": 12})
    del sweep["data"]["eval"], sweep["data"]["test"]  # training only: no evaluation stage
    sweep["resources"] = {"max_concurrent": 2}
    run = tmp_path / "runs" / "nodes"
    running, moved, seen = _Running(), {}, {}

    def remove_when_checkpointed() -> None:
        def on_worker():
            for folder in (run / "tune").glob("*/attempts.jsonl"):
                pid = records.read_attempts(folder.parent)[0]["pid"]
                try:
                    parent = psutil.Process(pid).ppid()
                except psutil.Error:
                    continue
                seen[folder.parent.name] = parent
                if parent == raylet:
                    return folder.parent
            return None

        folder = wait(running, on_worker, timeout=600)
        wait(running, lambda: records.complete_checkpoints([folder]), timeout=600)
        at = records.checkpoint_info(records.complete_checkpoints([folder])[-1])["step"]
        cluster.remove_node(worker)
        moved.update(folder=folder, at=at)

    thread = threading.Thread(target=remove_when_checkpointed, daemon=True)
    thread.start()
    try:
        result = engine.run(parse_sweep(sweep), storage=str(tmp_path / "runs"), progress=False)
    finally:
        running.done.set()
        thread.join(timeout=10)
    tally.injected("node removed mid-sweep")
    assert moved, f"no trial ran on the second node (raylet {raylet}): {seen}"
    assert set(result.trials["status"]) == {"done"}, result.trials
    attempts = records.read_attempts(Path(moved["folder"]))
    assert len(attempts) == 2
    assert attempts[1]["resumed_from"] >= moved["at"] > 0
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(alive) == 1  # everything after the removal ran on the head node
    tally.survived("node removed mid-sweep")
