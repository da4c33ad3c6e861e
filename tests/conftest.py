"""Shared test set-up: markers, the demo data, and one Ray session per module that asks for it.

A test that uses the `ray_local` fixture (directly, through another fixture or a module's
`pytestmark`) is marked `ray`, so `-m "not ray"` runs the tests that need no Ray cluster. A test
marked `slow` (the long fault-injection loops) is skipped unless `--runslow` is given.

Property tests (hypothesis) draw the same examples on every run, so CI is reproducible; the
`explore` profile (`--hypothesis-profile explore`) draws new ones on each run: run it now and
then to look for inputs nobody has tried."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("default")

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "engine" / "demo" / "data"

# Trials and Ray workers inherit these: no network, no W&B, quiet Ray.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config, items):
    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "ray_local" in item.fixturenames:
            item.add_marker(pytest.mark.ray)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray cluster of 2 CPUs for the whole test module (starting Ray costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of two nodes of one CPU each (`ray.cluster_utils.Cluster`), connected:
    the cluster and its second node."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()
