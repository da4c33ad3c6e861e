"""What the evaluation benchmarks share: the figures of one timed pool call, the agreement of
two result sets, and running the peer in its own process (its peak memory is then its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def start_ray() -> float:
    """Start a local Ray cluster over every CPU, quietly; returns the seconds it took."""
    import ray

    started = time.perf_counter()
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
    )
    return time.perf_counter() - started


def pool_figures(table, seconds: float) -> dict:
    """Figures of one `evaluate_candidates` call that took `seconds`; every row must be ok."""
    assert (table.status == "ok").all(), table[table.status != "ok"].error.tolist()
    results = {
        f"{c}/{s}": dict(zip(g.metric, g.value))
        for (c, s), g in table.groupby(["candidate", "eval_set"])
    }
    return {
        "seconds": seconds,
        "results": results,
        "compute_seconds": float(table.drop_duplicates(["candidate", "eval_set"]).seconds.sum()),
        "tree_share": table.attrs["prefix_tree_share"],
        "peak_actor_rss_mb": table.attrs["peak_actor_rss_mb"],
        "threads": table.attrs["torch_threads"],
    }


def agreement(a: dict, b: dict) -> float:
    """The largest absolute difference between two `{candidate/set: {metric: value}}` results."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(abs(a[k][m] - b[k][m]) for k in a for m in a[k])


def peer_process(script: str, options: list[str], paths: list[str]) -> dict:
    """Run `script OPTIONS --peer-only PATHS` in its own process; its last line is its JSON
    figures."""
    command = [sys.executable, script, *options, "--peer-only", *paths]
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])
