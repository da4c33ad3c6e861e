"""The merge stage: every merge job of the sweep runs as a Ray task, writing `merges/<candidate>/`.

Jobs run in parallel, as many as the cluster's CPUs allow. A job that fails is recorded with its
reason and the others go on. A merge that finished is recorded beside its folder
(`merges/<candidate>.json`, written after the folder is complete), so a resumed sweep reuses it.
LoRA checkpoints are baked into full weights once (`merges/.baked/`) before merging, so every
method sees full models. Greedy soups score candidates on the prepared selection split only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from ray import tune

from engine.planner import MergeJob, task_merge_recipe
from engine.rundir import RunDir, write_atomic
from sweeps import Sweep
from sweeps.plans import expected_members, plan_names

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["candidate", "kind", "plan", "method", "ingredients", "kept", "group", "parameters",
           "path", "status", "error", "submitted_at", "started_at", "seconds", "reused"]


def merge_stage(sweep: Sweep, run: RunDir, trials: "pd.DataFrame", base: str,
                progress: bool = True) -> "pd.DataFrame":
    """Plan and run the sweep's merges; write and return `merges.parquet`'s table.

    Merges that `EarlyMerges` started while trials ran are awaited, not started again.
    """
    from engine.planner import plan_jobs
    from engine.progress import job_bar
    from engine.results import write_table

    jobs = plan_jobs(sweep, trials)
    with job_bar("merges", len(jobs), progress) as done:
        table = run_merges(jobs, sweep, run, base, STARTED.pop(str(run.root), {}),
                           on_done=lambda row: done(row["candidate"], row["status"]))
    write_table(table, run.merges_table)
    return table


def submit(job: MergeJob, sweep: Sweep, run: RunDir, base: str):
    """Start one merge job as a Ray task (one CPU); returns its object ref."""
    import ray

    task = ray.remote(num_cpus=1)(run_job)
    return task.remote(job, sweep.model_dump_json(), str(run.root), base, time.time())


def run_merges(jobs: list[MergeJob], sweep: Sweep, run: RunDir, base: str,
               started: dict, on_done=None) -> "pd.DataFrame":
    """Run every job not done yet as a Ray task; one row per job (done, failed or skipped)."""
    import pandas as pd
    import ray

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

    def __init__(self, sweep: Sweep, run: RunDir, base: str) -> None:
        self.sweep, self.run, self.base = sweep, run, base

    @property
    def started(self) -> dict:
        return STARTED.setdefault(str(self.run.root), {})

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        import pandas as pd

        from engine.planner import plan_jobs
        from engine.results import trial_row

        finished = [t for t in trials if t is trial or t.status == "TERMINATED"]
        table = pd.DataFrame([trial_row(t, self.sweep) for t in finished])
        for job in plan_jobs(self.sweep, table):
            if job.candidate in self.started or job.skipped or _finished(job, self.run):
                continue
            if job.members == self._expected[job.plan]:
                self.started[job.candidate] = submit(job, self.sweep, self.run, self.base)

    @functools.cached_property
    def _expected(self) -> dict[str, int]:
        return {name: expected_members(plan, self.sweep)
                for name, plan in zip(plan_names(self.sweep.merge), self.sweep.merge)}


def run_job(job: MergeJob, sweep_json: str, root: str, base: str,
            submitted_at: float | None = None) -> dict:
    """Run one merge job (inside a Ray task or directly); never raises."""
    sweep, run = Sweep.model_validate_json(sweep_json), RunDir(Path(root))
    started = time.time()
    times = {"submitted_at": submitted_at, "started_at": started}
    out = run.merges / job.candidate
    try:
        inputs = [full_weights(path, base, run) for path in job.inputs]
        kept = _merge(job, inputs, out, sweep, run, base)
    except Exception as err:  # a failed merge is a result, not a crash of the sweep
        return {**job.describe(), "kept": [], "path": None, "status": "failed",
                "error": _reason(err), **times, "seconds": round(time.time() - started, 2)}
    row = {**job.describe(), "kept": kept, "path": str(out), "status": "done", "error": None,
           **times, "seconds": round(time.time() - started, 2)}
    write_atomic(_record(run, job), json.dumps(row, indent=2))
    return row


def _merge(job: MergeJob, inputs: list[str], out: Path, sweep: Sweep, run: RunDir,
           base: str) -> list[str]:
    """Write the merged model to `out`; return the ingredients it kept."""
    import merging

    if job.greedy:
        score = SelectionScorer(sweep, run, job.tasks)
        soup = merging.greedy_soup(inputs, out, score, mode="min", overwrite=True)
        by_input = dict(zip(inputs, job.ingredients))
        return [by_input[str(p)] for p in soup.ingredients]
    if job.kind == "task_merge":
        recipe = task_merge_recipe(job.method, job.parameters, base, inputs)
        # Seeded by the candidate's name, so a merge made again (on resume) is the same model.
        seed = int(hashlib.sha256(job.candidate.encode()).hexdigest()[:8], 16)
        merging.merge({**recipe, "seed": seed}, out, overwrite=True)
    else:
        merging.uniform_soup(inputs, out, overwrite=True)
    return list(job.ingredients)


def full_weights(path: str, base: str, run: RunDir) -> str:
    """The folder itself, or for a LoRA adapter its bake into the base (made once)."""
    if not (Path(path) / "adapter_config.json").is_file():
        return path
    from merging import bake_adapter

    from merging import MergeError

    baked = run.merges / ".baked" / hashlib.sha256(path.encode()).hexdigest()[:16]
    try:
        # Never replaced once there: another merge may be reading it.
        bake_adapter(base, path, baked, overwrite=False)
    except MergeError:
        if not (baked / "config.json").is_file():
            raise
    return str(baked)


class SelectionScorer:
    """Mean loss of a model folder on the prepared selection (`eval`) split of some tasks.

    It reads `data/<task>/eval` and nothing else: test sets are never seen by selection.
    """

    def __init__(self, sweep: Sweep, run: RunDir, tasks: list[str]):
        from engine.data import load_split

        self.sweep = sweep
        self.sets = [load_split(run.data / task, "eval") for task in tasks]

    def __call__(self, folder) -> float:
        import torch
        from transformers import AutoModelForCausalLM

        from engine.models import load_tokenizer
        from engine.train_loop import evaluate

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        pad = load_tokenizer(str(folder)).pad_token_id
        losses = [evaluate(model, data, self.sweep.train, pad, torch.device("cpu"))
                  for data in self.sets]
        return sum(losses) / len(losses)


def _finished(job: MergeJob, run: RunDir) -> dict | None:
    record = _record(run, job)
    if record.is_file() and (run.merges / job.candidate / "recipe.yaml").is_file():
        return {**json.loads(record.read_text()), "reused": True}
    return None


def _skipped(job: MergeJob) -> dict | None:
    if job.skipped is None:
        return None
    return {**job.describe(), "kept": [], "path": None, "status": "skipped",
            "error": job.skipped, "submitted_at": None, "started_at": None, "seconds": 0.0,
            "reused": False}


def _record(run: RunDir, job: MergeJob) -> Path:
    return run.merges / f"{job.candidate}.json"


def _reason(err: Exception) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    text = lines[0][:300] if lines else type(err).__name__
    return f"{type(err).__name__}: {text}" + (f" ({where.filename}:{where.lineno})" if where
                                               else "")
