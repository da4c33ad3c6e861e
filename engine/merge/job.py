"""One merge job, as it runs inside its Ray task: bake LoRA inputs, merge, record the result.

A job never raises: a failure is a row with its reason. The record `merges/<candidate>.json` is
written after the merged folder is complete, so a resumed sweep can reuse it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import traceback
from pathlib import Path

import merging
from engine.core import storage
from engine.core.rundir import RunDir, write_atomic
from engine.merge.planner import MergeJob, task_merge_recipe
from merging import MergeError
from sweeps import Sweep


def run_job(
    job: MergeJob, sweep_json: str, root: str, base: str, submitted: dict | None = None
) -> dict:
    """Run one merge job (inside a Ray task or directly); never raises. `submitted` says when
    the job was handed to Ray (`submitted_at`) and how many of the sweep's trials had not
    finished then (`unfinished_trials`)."""
    sweep, run = Sweep.model_validate_json(sweep_json), RunDir.at(root)
    base = storage.local(base)
    job = dataclasses.replace(job, inputs=[storage.local(p) for p in job.inputs])
    started = time.time()
    times = {"submitted_at": None, "unfinished_trials": None, **(submitted or {})}
    times["started_at"] = started
    out = run.merges / job.candidate
    try:
        # On object storage: fetched to this node, and held while the merge reads them.
        with storage.fetched(base, *job.inputs, run.data if job.greedy else None):
            inputs = [full_weights(path, base, run) for path in job.inputs]
            kept = _merge(job, inputs, out, sweep, run, base)
        storage.upload(out)
    except Exception as err:  # a failed merge is a result, not a crash of the sweep
        return {
            **job.describe(),
            "kept": [],
            "path": None,
            "status": "failed",
            "error": _reason(err),
            **times,
            "seconds": round(time.time() - started, 2),
        }
    row = {
        **job.describe(),
        "kept": kept,
        "path": storage.shown(out),
        "status": "done",
        "error": None,
        **times,
        "seconds": round(time.time() - started, 2),
    }
    write_atomic(record_path(run, job), json.dumps(row, indent=2))
    storage.upload(record_path(run, job))  # last: on storage, the record says the merge is whole
    return row


def _merge(
    job: MergeJob, inputs: list[str], out: Path, sweep: Sweep, run: RunDir, base: str
) -> list[str]:
    """Write the merged model to `out`; return the ingredients it kept."""
    if job.greedy:
        # Imported here: it loads torch and transformers, which the numpy merges of uniform
        # soups and checkpoint averages never need in their Ray worker.
        from engine.merge.scorer import SelectionScorer

        score = SelectionScorer(sweep, run, job.tasks)
        soup = merging.greedy_soup(inputs, out, score, mode=score.mode, overwrite=True)
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
    from merging import bake_adapter  # imports torch: only LoRA checkpoints need it

    baked = run.merges / ".baked" / hashlib.sha256(path.encode()).hexdigest()[:16]
    try:
        # Never replaced once there: another merge may be reading it.
        bake_adapter(base, path, baked, overwrite=False)
    except MergeError:
        if not (baked / "config.json").is_file():
            raise
    return str(baked)


def record_path(run: RunDir, job: MergeJob) -> Path:
    return run.merges / f"{job.candidate}.json"


def _reason(err: Exception) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    text = lines[0][:300] if lines else type(err).__name__
    return f"{type(err).__name__}: {text}" + (
        f" ({where.filename}:{where.lineno})" if where else ""
    )
