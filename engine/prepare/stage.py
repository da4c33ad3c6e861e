"""The prepare stage: read, order, split and tokenize the data once per sweep, on Ray Data.

The order is a hash of each example and the data seed, so it does not depend on how Ray splits
the files into blocks: a data-scale subset of n examples is the n smallest keys, and a smaller
subset is always inside a larger one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.core import storage
from engine.core.encode import fast_path_agrees
from engine.core.progress import warn
from engine.core.rundir import RunDir, write_atomic
from engine.prepare import reference
from engine.prepare.keys import KEY_BUCKETS
from engine.prepare.manifest import MANIFEST_VERSION, read_manifest
from engine.prepare.selection import apply_selection
from engine.prepare.sources import check_fields, read_records, read_texts
from engine.prepare.tokenize import label_split, tokenize_batch
from sweeps import Sweep, SweepError
from sweeps.config import DataConfig


def prepare(sweep: Sweep, run: RunDir, model_path: str) -> dict:
    """Tokenized train and eval Parquet shards of every task plus `manifest.json`; reused when
    unchanged.

    One Ray Data job reads, tokenizes and writes every task's splits into `data/<task>/<split>`;
    the manifest is written last, so an interrupted prepare is simply redone.
    """
    key = cache_key(sweep, model_path)
    cached = read_manifest(run)
    if cached and cached["cache_key"] == key:
        damage = damaged_split(run, cached)
        if damage is None:
            return cached
        # The same inputs prepare the same data, so trials trained on it stay valid.
        warn(f"{damage}; preparing the data again")
    elif cached and run.tune.exists():
        raise SweepError(
            f"data: the data or tokenizer changed since {run.root} started training; "
            "run the sweep under a new name (or --storage) instead of mixing trials "
            "trained on different data"
        )
    started = time.time()
    for left in run.data.glob(".staging-*"):  # an interrupted prepare's (one driver at a time)
        shutil.rmtree(left, ignore_errors=True)
    staging = run.data / f".staging-{os.getpid()}"
    dataset, entries = _pipeline(sweep, model_path)
    _write(dataset, staging)
    tasks = {}
    for task in sweep.task_names():
        data = sweep.task_data(task)
        counts = {
            split: _publish(
                staging / f"task={task}" / f"split={split}",
                run.data / task / split,
                f"{task} {split}",
            )
            for split in ("train", "eval")
        }
        tasks[task] = {
            "sources": {k: getattr(data, k) for k in ("train", "eval", "test")},
            **counts,
            **entries[task],
        }
    shutil.rmtree(staging, ignore_errors=True)
    references = reference.compute(sweep, run.data, model_path)
    manifest = {
        "version": MANIFEST_VERSION,
        "cache_key": key,
        "model_path": model_path,
        "format": sweep.data.format,
        "seed": sweep.data.seed,
        "seconds": round(time.time() - started, 2),
        "tasks": tasks,
        **({"reference": references} if references else {}),
    }
    write_atomic(run.manifest, json.dumps(manifest, indent=2))
    return manifest


def damaged_split(run: RunDir, manifest: dict) -> str | None:
    """What is wrong with the prepared data the manifest describes (a shard that does not read,
    or fewer rows than were written), from the Parquet footers alone; None when it is whole."""
    for task, entry in manifest["tasks"].items():
        for split in ("train", "eval"):
            folder = run.data / task / split
            try:
                rows = sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("*.parquet"))
            except (OSError, pa.ArrowException) as err:
                return f"the prepared data in {folder} is damaged ({type(err).__name__}: {err})"
            if rows != entry[split]["rows"]:
                return (
                    f"the prepared data in {folder} holds {rows} rows, but {entry[split]['rows']} "
                    "were written"
                )
    return None


def cache_key(sweep: Sweep, model_path: str) -> str:
    """A hash of every task's data settings, the files' contents (targets of selection stages
    included) and the tokenizer (and the base model and the settings its reference
    log-probabilities are computed with, where an objective needs them)."""
    digest = hashlib.sha256()
    for task in sweep.task_names():
        data = sweep.task_data(task)
        digest.update(f"{task}\0{data.model_dump_json()}".encode())
        targets = [getattr(stage, "target", None) for stage in data.select]
        for path in (data.train, data.eval, *targets):
            if path:
                digest.update(_file_digest(Path(path)).encode())
    wanted = reference.settings(sweep)
    if wanted is not None:  # the base model's log-probabilities are prepared data too
        digest.update(f"{model_path}\0{json.dumps(wanted, sort_keys=True)}".encode())
    tokenizer = Path(model_path) / "tokenizer.json"
    digest.update(_file_digest(tokenizer).encode() if tokenizer.is_file() else model_path.encode())
    return digest.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pipeline(sweep: Sweep, model_path: str):
    """(the Ray Dataset of tokenized examples of every task and split, with `task` and `split`
    columns; each task's manifest entries). Selection runs on a task's training file before
    the split."""
    parts, entries = [], {}
    for task in sweep.task_names():
        task_parts, entries[task] = _task_parts(sweep.task_data(task), task, sweep, model_path)
        parts += task_parts
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0], entries


def _task_parts(data: DataConfig, task: str, sweep: Sweep, model_path: str):
    trust = sweep.model.trust_remote_code
    tokenize = functools.partial(
        tokenize_batch,
        data=data,
        model_path=model_path,
        trust_remote_code=trust,
        fast=fast_path_agrees(model_path, trust),
    )
    held_out = 0 if data.eval else int(round(data.eval_fraction * KEY_BUCKETS))
    sources = [(data.train, held_out)] + ([(data.eval, KEY_BUCKETS)] if data.eval else [])
    parts, skipped, selection = [], {}, []
    for path, cut in sources:
        check_fields(path, data.fields())
        records, skipped[path] = read_records(path, data.fields(), data.on_bad_line)
        if path == data.train:
            records, selection = apply_selection(
                records,
                data.select,
                data,
                functools.partial(read_texts, on_bad_line=data.on_bad_line),
            )
        label = functools.partial(label_split, cut=cut, task=task)
        parts.append(
            records.map_batches(tokenize, batch_format="pyarrow").map_batches(
                label, batch_format="pyarrow"
            )
        )
    return parts, {"selection": selection, "skipped_lines": {p: n for p, n in skipped.items() if n}}


def _write(dataset, staging: Path) -> None:
    """Ray Data's tasks write the shards wherever they run: into `staging` itself, or, when the
    run directory is on object storage, into it there, then fetched into this copy (a node's
    own disk is not the driver's)."""
    remote = storage.Remote.of(staging)
    if remote is None:
        dataset.write_parquet(str(staging), partition_cols=["task", "split"])
        return
    dataset.write_parquet(remote.base, filesystem=remote.fs, partition_cols=["task", "split"])
    storage.fetch(staging)
    storage.delete(staging)


def _publish(staged: Path, final: Path, split: str) -> dict:
    """Move one staged split into place and count it; an empty split is an error."""
    if not staged.is_dir():
        raise SweepError(
            f"data: the prepared {split} set is empty; give more data, a larger "
            "data.eval_fraction, or a data.eval file"
        )
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged.rename(final)
    table = pq.read_table(final, columns=["n_tokens"])
    return {"rows": table.num_rows, "tokens": int(pa.compute.sum(table["n_tokens"]).as_py() or 0)}
