"""Reading W&B's offline run files back, as `wandb sync` would: each `run-*.wandb` is a log of
protobuf records in 32 KiB blocks (the LevelDB log layout, after a 7-byte `:W&B` header).
wandb 0.31 ships no Python reader of its own, so the tests read them here (copying each file
first, as W&B advises: a run still open may be written to)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER, RECORD_HEADER = 32768, 7, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    """Every record of one run file, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(shutil.copy(path, tmp)).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + RECORD_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER:  # a block's tail too short for a record header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zeros to the block's end
            pos += left
            continue
        pending += data[pos + RECORD_HEADER : pos + RECORD_HEADER + length]
        pos += RECORD_HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


@dataclass
class Run:
    """What one offline run holds: its identity, config, history by step, summary and end."""

    file: Path
    name: str = ""
    job_type: str = ""
    group: str = ""
    project: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: dict[int, dict] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None
    artifacts: list = field(default_factory=list)


def read_run(path: Path) -> Run:
    run = Run(path)
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.name, run.job_type, run.group = r.display_name, r.job_type, r.run_group
            run.project, run.tags = r.project, list(r.tags)
            _update(run.config, r.config.update)
        elif kind == "config":
            _update(run.config, record.config.update)
        elif kind == "history":
            row: dict = {}
            _update(row, record.history.item)
            run.history[int(row.get("_step", record.history.step.num))] = row
        elif kind == "summary":
            _update(run.summary, record.summary.update)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
    return run


def read_runs(run_dir: Path) -> list[Run]:
    return [read_run(p) for p in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))]


def _update(into: dict, items) -> None:
    """Items into `into`; a nested key (W&B splits a logged table's fields) as nested dicts."""
    for item in items:
        *parents, last = list(item.nested_key) or [item.key]
        place = into
        for key in parents:
            place = place.setdefault(key, {})
        place[last] = json.loads(item.value_json)
