"""The merge stage: every merge job of the sweep runs as a Ray task, writing `merges/<candidate>/`.

Jobs run in parallel, as many as the cluster's CPUs allow. A job that fails is recorded with its
reason and the others go on. A merge that finished is recorded beside its folder
(`merges/<candidate>.json`, written after the folder is complete), so a resumed sweep reuses it.
LoRA checkpoints are baked into full weights once (`merges/.baked/`) before merging, so every
method sees full models. Greedy soups score candidates on the prepared selection split only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time

import pandas as pd
import ray
from ray import tune

from engine.core import storage
from engine.core.progress import job_bar
from engine.core.rundir import RunDir, write_table
from engine.merge.job import record_path, run_job
from engine.merge.planner import MergeJob, plan_jobs
from engine.train.axes import Sizes
from engine.train.table import trials_table
from sweeps import Sweep
from sweeps.plans import expected_members, plan_names

COLUMNS = [
    "candidate",
    "kind",
    "plan",
    "method",
    "ingredients",
    "kept",
    "group",
    "parameters",
    "path",
    "status",
    "error",
    "submitted_at",
    "unfinished_trials",
    "started_at",
    "seconds",
    "reused",
]


def merge_stage(
    sweep: Sweep, run: RunDir, trials: pd.DataFrame, base: str, progress: bool = True
) -> pd.DataFrame:
    """Plan and run the sweep's merges; write and return `merges.parquet`'s table.

    Merges that `EarlyMerges` started while trials ran are awaited, not started again.
    """
    jobs = plan_jobs(sweep, trials)
    run.pull("merges")  # on object storage: merges an earlier run finished, on any node
    with job_bar("merges", len(jobs), progress) as done:
        table = run_merges(
            jobs,
            sweep,
            run,
            base,
            STARTED.pop(str(run.root), {}),
            on_done=lambda row: done(row["candidate"], row["status"]),
        )
    write_table(table, run.merges_table)
    return table


def submit(job: MergeJob, sweep: Sweep, run: RunDir, base: str, unfinished_trials: int = 0):
    """Start one merge job as a Ray task (one CPU); returns its object ref. `unfinished_trials`:
    how many of the sweep's trials Tune had not finished when the job was handed over."""
    task = ray.remote(num_cpus=1)(run_job)
    submitted = {"submitted_at": time.time(), "unfinished_trials": unfinished_trials}
    # Locations, not paths: the task's node keeps its copy of a run directory on object
    # storage wherever its own cache is (`storage.local`).
    job = dataclasses.replace(job, inputs=[storage.shown(p) for p in job.inputs])
    return task.remote(job, sweep.model_dump_json(), run.location, storage.shown(base), submitted)


def run_merges(
    jobs: list[MergeJob], sweep: Sweep, run: RunDir, base: str, started: dict, on_done=None
) -> pd.DataFrame:
    """Run every job not done yet as a Ray task; one row per job (done, failed or skipped)."""
    rows, refs = {}, {}
    for job in jobs:
        # A merge started early is this run's, even if it has finished (and left its record).
        row = None if job.candidate in started else _finished(job, run) or _skipped(job)
        if row:
            rows[job.candidate] = row
        else:
            refs[started.get(job.candidate) or submit(job, sweep, run, base)] = job
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        job = refs.pop(ready[0])
        rows[job.candidate] = {**ray.get(ready[0]), "reused": False}
        if on_done:
            on_done(rows[job.candidate])
    ordered = [rows[job.candidate] for job in jobs]
    return pd.DataFrame(ordered, columns=COLUMNS)


# Merges started while trials run, by run directory, then candidate: object refs of this
# process. Module-level because Tune restores its own copies of the callbacks on resume.
STARTED: dict[str, dict] = {}


class EarlyMerges(tune.Callback):
    """Starts each merge as a Ray task as soon as every trial it reads has finished.

    After the train stage, `merge_stage` plans the whole sweep again and waits for these
    instead of starting them twice.
    """

    def __init__(self, sweep: Sweep, run: RunDir, base: str, sizes: Sizes) -> None:
        # The base as a location: Tune pickles its callbacks (`storage.local`).
        self.sweep, self.run, self.base, self.sizes = sweep, run, storage.shown(base), sizes

    @property
    def started(self) -> dict:
        return STARTED.setdefault(str(self.run.root), {})

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # Tune creates trials as it starts them, so the sweep says how many there will be.
        ended = sum(t is trial or t.status in ("TERMINATED", "ERROR") for t in trials)
        unfinished = self.sweep.trial_count() - ended
        self.run.pull("tune")  # on object storage: the trial's folder, from its node
        self.run.pull("merges")
        table = trials_table(self.run, self.sweep, self.sizes)
        for job in plan_jobs(self.sweep, table):
            if job.candidate in self.started or job.skipped or _finished(job, self.run):
                continue
            if job.members == self._expected[job.plan]:
                self.started[job.candidate] = submit(
                    job, self.sweep, self.run, storage.local(self.base), unfinished
                )

    @functools.cached_property
    def _expected(self) -> dict[str, int]:
        return {
            name: expected_members(plan, self.sweep)
            for name, plan in zip(plan_names(self.sweep.merge), self.sweep.merge)
        }


def _finished(job: MergeJob, run: RunDir) -> dict | None:
    record = record_path(run, job)
    if record.is_file() and (run.merges / job.candidate / "recipe.yaml").is_file():
        return {**json.loads(record.read_text()), "reused": True}
    return None


def _skipped(job: MergeJob) -> dict | None:
    if job.skipped is None:
        return None
    return {
        **job.describe(),
        "kept": [],
        "path": None,
        "status": "skipped",
        "error": job.skipped,
        "submitted_at": None,
        "unfinished_trials": None,
        "started_at": None,
        "seconds": 0.0,
        "reused": False,
    }
