"""Whether every node of the cluster sees the run directory.

Trials write their checkpoints into the run directory on whichever node they run, and merges
and evaluation read them on others: on a cluster of several nodes the run directory must be on
a file system they all mount at the same path. A local folder there does not fail at once; it
fails later, when a merge cannot find a checkpoint a trial wrote on another node. So the run
starts by asking every node to read a file the driver just wrote.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from engine.core.errors import RunError

MARKER_DIR = ".raysoup-nodes"


def read_marker(path: str) -> str | None:
    """The marker's content as this node sees it (None when it cannot read it)."""
    try:
        return Path(path).read_text()
    except OSError:
        return None


def check_shared(folder: Path) -> int:
    """Raise `RunError` naming the nodes that cannot read a file written into `folder` here;
    how many nodes were asked (1 on a single machine, where nothing is asked)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return len(nodes)
    token = secrets.token_hex(8)
    marker = Path(folder) / MARKER_DIR / token
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(token)
    reader = ray.remote(num_cpus=0)(read_marker)
    try:
        seen = ray.get(
            [
                reader.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                ).remote(str(marker))
                for node in nodes
            ]
        )
    finally:
        shutil.rmtree(marker.parent, ignore_errors=True)
    blind = [
        f"node {node['NodeID'][:8]} at {node.get('NodeManagerAddress')} "
        f"({node.get('NodeManagerHostname')})"
        for node, content in zip(nodes, seen)
        if content != token
    ]
    if blind:
        raise RunError(
            f"the run directory {folder} is not on storage every node of the cluster sees: "
            f"{', '.join(blind)} cannot read a file written there, and trials there would "
            "write checkpoints that merges and evaluation elsewhere cannot find; give --storage "
            "a folder on a file system every node mounts at the same path (NFS, EFS, "
            "Filestore, a ReadWriteMany volume)"
        )
    return len(nodes)
