"""Trials that train on a worker group: Ray Train's `TorchTrainer` started from inside the Tune
function trial (Ray's Train-in-Tune pattern), each worker running the same loop as an
in-process trial through `engine.train.parallel` (DDP, or DeepSpeed ZeRO).

The Tune trial holds only a token CPU share; its worker group reserves the real resources in
its own placement group, which Ray Train removes when the group ends (a trial the scheduler
stops ends its group first: `engine/train/stops.py`). Rank 0 publishes each checkpoint into
the trial's folder, complete, before any rank reports its step; `TuneReportCallback` passes
rank 0's metrics on to Tune.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import ray
from ray import train, tune
from ray.actor import ActorHandle
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from engine.core.errors import RunError
from engine.core.rundir import write_atomic
from engine.core.storage import fetched, local, shown
from engine.train import records
from engine.train.loop import TrialSpec
from engine.train.stops import ReportsUntilStopped, StopSeen, group_key, running
from sweeps import Sweep

DRIVER_CPUS = 0.01  # what a worker-group trial's own process holds (zero is refused)
WORKERS_FILE = "workers.json"


class TrainSession:
    """The `Session` of one rank of a worker group."""

    def __init__(
        self, trial_dir: Path, keep: int | None, resume_from: Path | None, watch=None
    ) -> None:
        self.trial_dir, self.keep, self.resume_from = trial_dir, keep, resume_from
        self.rank = train.get_context().get_world_rank()
        # rank 0 watches for its trial's stop; the loop's all-reduce tells the other ranks
        self.stopped = StopSeen(*watch) if watch is not None and self.rank == 0 else None

    def stopping(self) -> bool:
        return self.stopped is not None and self.stopped()

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        if checkpoint is not None:  # rank 0, after every rank wrote its part
            if self.stopping():  # the scheduler judged the trial at an earlier step
                shutil.rmtree(checkpoint, ignore_errors=True)
            else:
                records.publish(checkpoint, self.trial_dir, metrics["step"])
                records.prune(self.trial_dir, self.keep)
        train.report(metrics)  # every rank reports, or Ray Train waits for the missing ones

    def restore_dir(self) -> Path | None:
        return self.resume_from


def worker_loop(config: dict) -> None:
    """What each worker of the group runs."""
    # Locations, not paths: each rank's node has its own copy of a run directory on object
    # storage, fetched here.
    spec: TrialSpec = config["spec"]
    spec = replace(spec, model_path=local(spec.model_path), data_dir=Path(local(spec.data_dir)))
    trial_dir = Path(local(config["trial_dir"]))
    latest = Path(local(config["latest"])) if config["latest"] else None
    with fetched(spec.model_path, spec.data_dir, latest):
        _run_rank(spec, trial_dir, latest, config["keep"], config["watch"])


def _run_rank(
    spec: TrialSpec, trial_dir: Path, latest: Path | None, keep: int | None, watch
) -> None:
    import torch.distributed as dist

    from engine.train.loop import train as train_loop
    from engine.train.parallel import DDP, DeepSpeed

    kind = DeepSpeed if spec.sweep.deepspeed is not None else DDP
    parallel = kind(spec.sweep, trial_dir)
    ctx = train.get_context()
    me = {
        "rank": ctx.get_world_rank(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    everyone = [None] * parallel.world
    dist.all_gather_object(everyone, me)
    if parallel.rank == 0:
        trial_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(trial_dir / WORKERS_FILE, json.dumps(everyone, indent=2))
    train_loop(spec, TrainSession(trial_dir, keep, latest, watch), parallel)


def run_workers(
    spec: TrialSpec,
    trial_dir: Path,
    keep: int | None,
    latest: Path | None,
    storage: Path,
    stops: ActorHandle | None = None,
    in_tune: bool = True,
) -> None:
    """Train the trial on a worker group and wait for it; a failed group raises (Tune then
    retries the trial from its newest complete checkpoint). `in_tune`: pass rank 0's reports
    on to the Tune trial this runs in. `stops`: where a stop of the trial by the scheduler
    is told to the group (`engine/train/stops.py`)."""
    res = spec.sweep.resources
    gpus = res.worker_gpus()
    per_worker = {"CPU": res.worker_cpus(), **({"GPU": gpus} if gpus else {})}
    name = trial_dir.name
    # where rank 0 and the group's controller watch for a stop of the trial
    watch = (stops, group_key(tune.get_context().get_trial_id())) if stops is not None else None
    # Ray Train keeps nothing this trial needs (checkpoints are in the trial's folder), and a
    # run of the same name would be restored by Ray Train: each attempt starts afresh.
    shutil.rmtree(storage / name, ignore_errors=True)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "spec": replace(
                spec,
                model_path=shown(spec.model_path),
                data_dir=shown(spec.data_dir),
            ),
            "trial_dir": shown(trial_dir),
            "keep": keep,
            "latest": shown(latest) if latest else None,
            "watch": watch,
        },
        scaling_config=train.ScalingConfig(
            num_workers=res.workers,
            use_gpu=gpus > 0,
            resources_per_worker=per_worker,
            placement_strategy=res.placement.upper(),
        ),
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
        run_config=train.RunConfig(
            name=name,
            storage_path=str(storage),
            callbacks=_reports(watch) if in_tune else [],
            failure_config=train.FailureConfig(max_failures=0),
        ),
    )
    if watch is None:
        trainer.fit()
        return
    with running(*watch):
        trainer.fit()


def _reports(watch: tuple | None) -> list:
    """Passing rank 0's reports on to the Tune trial (until the trial is stopped)."""
    return [TuneReportCallback() if watch is None else ReportsUntilStopped(*watch)]


def group_capacity(sweep: Sweep, cluster: dict[str, float] | None = None) -> int:
    """How many worker groups of the sweep's size the cluster holds at once (by CPUs, and by
    GPUs when workers use them); `RunError` when not even one fits."""
    res = sweep.resources
    cluster = ray.cluster_resources() if cluster is None else cluster
    need = {"CPU": res.workers * res.worker_cpus(), "GPU": res.workers * res.worker_gpus()}
    # Each trial's own process holds DRIVER_CPUS beside its group.
    fits = [
        math.floor(cluster.get(kind, 0.0) / (amount + (DRIVER_CPUS if kind == "CPU" else 0)))
        for kind, amount in need.items()
        if amount > 0
    ]
    capacity = min(fits)
    if capacity < 1:
        have = {k: cluster.get(k, 0.0) for k, v in need.items() if v > 0}
        raise RunError(
            f"resources: a trial's worker group needs {_amounts(need)} ({res.workers} workers), "
            f"more than the cluster has ({_amounts(have)}); lower resources.workers or "
            "cpus_per_worker / gpus_per_worker, or add nodes"
        )
    return capacity


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items() if v > 0) or "nothing"
