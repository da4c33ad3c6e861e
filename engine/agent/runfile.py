"""Reading W&B run files back, as `wandb sync` would: each `run-*.wandb` is a log of protobuf
records in 32 KiB blocks (the LevelDB log layout, after a 7-byte `:W&B` header). wandb 0.31
ships no Python reader of its own.

`records` and `read_run` read a whole file (copying it first, as W&B advises: a run still open
may be written to); `MetricTail` follows a file that a running script is writing, a record at a
time, and ends at the last complete one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER, RECORD_HEADER = 32768, 7, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
MAGIC = b":W&B"


def parse(data: bytes, pos: int = HEADER) -> tuple[list[pb.Record], int]:
    """The complete records of `data` from `pos` (the start of a record), and the position
    after the last of them: a record whose end is not written yet is left for the next read."""
    found, pending, start = [], b"", pos
    while pos + RECORD_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER:  # a block's tail too short for a record header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zeros to the block's end
            pos += left
            continue
        if pos + RECORD_HEADER + length > len(data):
            break  # being written
        pending += data[pos + RECORD_HEADER : pos + RECORD_HEADER + length]
        pos += RECORD_HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            found.append(record)
            pending, start = b"", pos
    return found, start if pending else max(start, pos)


def records(path: Path) -> Iterator[pb.Record]:
    """Every record of one run file, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(shutil.copy(path, tmp)).read_bytes()
    if data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{path} is not a W&B run file")
    yield from parse(data)[0]


@dataclass
class Run:
    """What one run holds: its identity, config, history by step, summary and end."""

    file: Path
    run_id: str = ""
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
            run.run_id, run.name, run.job_type = r.run_id, r.display_name, r.job_type
            run.group, run.project, run.tags = r.run_group, r.project, list(r.tags)
            _update(run.config, r.config.update)
        elif kind == "config":
            _update(run.config, record.config.update)
        elif kind == "history":
            row = history_row(record)
            run.history[int(row.get("_step", record.history.step.num))] = row
        elif kind == "summary":
            _update(run.summary, record.summary.update)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
    return run


def read_runs(run_dir: Path) -> list[Run]:
    """The offline runs under `<run_dir>/wandb/`."""
    return [read_run(p) for p in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))]


def run_files(wandb_dir: Path, run_id: str | None = None) -> list[Path]:
    """The run files under a `wandb/` folder (offline and online runs), oldest first; with
    `run_id`, only that run's."""
    pattern = f"*run-*-{run_id}/run-{run_id}.wandb" if run_id else "*run-*/run-*.wandb"
    return sorted(Path(wandb_dir).glob(pattern), key=lambda p: p.stat().st_mtime)


def history_row(record: pb.Record) -> dict:
    """One history record (a `wandb.log` step) as a mapping."""
    row: dict = {}
    _update(row, record.history.item)
    return row


def _update(into: dict, items) -> None:
    """Items into `into`; a nested key (W&B splits a logged table's fields) as nested dicts."""
    for item in items:
        *parents, last = list(item.nested_key) or [item.key]
        place = into
        for key in parents:
            place = place.setdefault(key, {})
        place[last] = json.loads(item.value_json)


def metric_value(row: dict, name: str) -> Any:
    """The value of metric `name` in a history row: its key, or a dotted path through a
    logged mapping (`val.loss` in `{"val": {"loss": ...}}`); None when the row has none."""
    if name in row:
        return row[name]
    place: Any = row
    for key in name.split("."):
        if not isinstance(place, dict) or key not in place:
            return None
        place = place[key]
    return place


def is_number(value: Any) -> bool:
    """A metric value: an int or a float (NaN and infinities included), never a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class MetricTail:
    """Follows the run file of one script's run under its `wandb/` folder: each call of
    `new_values` reads what was written since the last one and returns the metric's new
    values, one per history record (`wandb.log` step) that holds a number for it.

    W&B writes a non-finite float as JSON's `NaN`, `Infinity` or `-Infinity`, which read back
    as floats. A value that is no number (text, a boolean, a mapping) is not a value of the
    metric (W&B's hyperband leaves them out too).
    """

    def __init__(self, wandb_dir: Path, run_id: str, metric: str, since: float = 0.0) -> None:
        self.wandb_dir, self.run_id, self.metric, self.since = wandb_dir, run_id, metric, since
        self.path: Path | None = None
        self.pos = HEADER
        self.exited = False  # the run's exit record was read: W&B wrote all of it

    def new_values(self) -> list[float]:
        path = self._find()
        if path is None:
            return []
        data = path.read_bytes()
        if data[: len(MAGIC)] != MAGIC:
            return []  # created, its header not written yet
        found, self.pos = parse(data, self.pos)
        self.exited = self.exited or any(r.WhichOneof("record_type") == "exit" for r in found)
        rows = (history_row(r) for r in found if r.WhichOneof("record_type") == "history")
        values = (metric_value(row, self.metric) for row in rows)
        return [float(value) for value in values if is_number(value)]

    def _find(self) -> Path | None:
        # The script's run is the one of the id it was given; a script that chose its own id
        # (`wandb.init(id=...)`) has the first run file made after it started.
        if self.path is None:
            mine = run_files(self.wandb_dir, self.run_id)
            later = [p for p in run_files(self.wandb_dir) if p.stat().st_mtime >= self.since]
            self.path = (mine or later or [None])[0]
        return self.path
