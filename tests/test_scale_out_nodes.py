"""Worker groups across nodes (`ray.cluster_utils.Cluster`, two nodes of one CPU each): a
two-worker trial with `placement: spread` puts one worker on each node, and a sweep of more
group trials than the cluster holds at once queues them and finishes every one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

import engine
from engine.core import shared
from engine.core.errors import RunError
from engine.train.experiment import max_concurrent
from engine.train.workers import WORKERS_FILE
from sweeps import parse_sweep
from tests.test_scale_out import group_sweep

pytestmark = pytest.mark.ray


# Slow (a minute): trials across two nodes run on every CI run in test_storage.py and
# test_submit.py, and queued worker groups in test_scale_out.py; this one with --runslow.
@pytest.mark.slow
@pytest.mark.usefixtures("two_nodes")
def test_spread_workers_land_on_both_nodes_and_queued_trials_finish(tmp_path):
    sweep = group_sweep(
        "nodes",
        seeds=[0, 1],
        # 0.9 CPU a worker: one group (1.81 CPUs with its trial's share) fits the two nodes
        resources={"workers": 2, "cpus_per_worker": 0.9, "placement": "spread", "max_failures": 0},
        checkpoint={"every": 2},
    )
    sweep["train"].update(max_steps=2, eval_every=2)
    del sweep["evaluate"], sweep["data"]["eval"]  # training only: no evaluation stage
    parsed = parse_sweep(sweep)
    assert max_concurrent(parsed) == 1  # two trials for a cluster of one group
    result = engine.run(parsed, storage=str(tmp_path), progress=False)
    trials = result.trials
    assert list(trials["status"]) == ["done", "done"], trials["error"].tolist()
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    for path in trials["path"]:
        placed = json.loads((Path(path) / WORKERS_FILE).read_text())
        assert [w["rank"] for w in placed] == [0, 1]
        assert {w["node_id"] for w in placed} == nodes  # one worker on each node
    states = {pg["state"] for pg in ray.util.placement_group_table().values()}
    assert states == {"REMOVED"}


def test_every_node_must_read_the_run_directory(two_nodes, tmp_path, monkeypatch):
    assert shared.check_shared(tmp_path) == 2  # both raylets share this machine's disk
    assert not (tmp_path / shared.MARKER_DIR).exists()
    # A folder one node cannot see cannot be made on one machine (both nodes share its disk),
    # so the second node's reader is made blind: it answers as a node without the folder.
    blind_id = two_nodes[1].node_id

    def blind(path: str):
        here = ray.get_runtime_context().get_node_id()
        return None if here == blind_id else Path(path).read_text()

    monkeypatch.setattr(shared, "read_marker", blind)
    with pytest.raises(RunError, match=rf"node {blind_id[:8]} at .* cannot read a file") as err:
        shared.check_shared(tmp_path)
    head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != blind_id)
    assert head[:8] not in str(err.value) and "--storage" in str(err.value)
    assert not (tmp_path / shared.MARKER_DIR).exists()
