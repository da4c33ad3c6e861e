"""Reading the user's data files into Ray Datasets of records, every value as text."""

from __future__ import annotations

import functools
import json

import pyarrow as pa
import pyarrow.csv
import ray.data

from engine.core import storage
from engine.core.files import line_problem, missing_field, scan_jsonl
from engine.prepare.selection.pipeline import joined_texts
from sweeps import SweepError


def read_source(path: str, fields: list[str] | None = None):
    """A Ray Dataset over one Parquet, CSV or JSON-array file, chosen by suffix (`fields` of a
    CSV file are read as text, not guessed numbers). JSONL goes through `read_records`."""
    where, fs = _for_tasks(path)
    if path.endswith(".parquet"):
        return ray.data.read_parquet(where, filesystem=fs)
    if path.endswith(".csv"):
        text = pyarrow.csv.ConvertOptions(column_types={f: pa.string() for f in fields or []})
        return ray.data.read_csv(where, convert_options=text, filesystem=fs)
    return ray.data.read_json(where, filesystem=fs)


def _for_tasks(path: str):
    """Where Ray Data's read tasks, on any node, find `path`: a file of a run directory on
    object storage (the inputs a submitted job staged there) is read from storage; any other
    path as it is."""
    remote = storage.Remote.of(path) if "://" not in path else None
    return (remote.base, remote.fs) if remote else (path, None)


def read_records(path: str, fields: list[str], on_bad_line: str = "error"):
    """(a Ray Dataset of `fields` from one data file, how many malformed JSONL lines it skipped).

    JSONL lines are parsed with Python's `json`, so a value keeps its type: Ray's own JSONL
    reader goes through pandas, which turns the string " 47" into the number 47. A file with bad
    lines is refused (file and line named, found by a scan first) or its bad lines are skipped.
    """
    if not path.endswith(".jsonl"):
        return read_source(path, fields).select_columns(fields), 0
    bad = scan_jsonl(path, fields) if "://" not in path else None
    if bad and bad.count and on_bad_line == "error":
        raise SweepError(
            f"data: {path} line {bad.first_line}: {bad.first_reason} ({bad.count} "
            "bad line(s) in all); fix the file, or set data.on_bad_line: skip"
        )
    parse = functools.partial(_parse_lines, fields=fields, path=path, skip=on_bad_line == "skip")
    where, fs = _for_tasks(path)
    records = ray.data.read_text(where, filesystem=fs).map_batches(parse, batch_format="pyarrow")
    return records, bad.count if bad else 0


def _parse_lines(batch: pa.Table, fields: list[str], path: str, skip: bool) -> pa.Table:
    """The records of a batch of JSONL lines, `fields` as text; blank lines are ignored."""
    records = []
    for line in batch["text"].to_pylist():
        if not line.strip():
            continue
        problem = line_problem(line, fields)
        if problem and not skip:
            raise SweepError(f"data: {path}: a line is {problem}; set data.on_bad_line: skip")
        if not problem:
            records.append(json.loads(line))
    return pa.table({f: pa.array([str(r[f]) for r in records], pa.string()) for f in fields})


def read_texts(path: str, fields: list[str], on_bad_line: str = "error") -> list[str]:
    """A side file's rows (a target sample) as texts: `fields` joined by newlines."""
    records, _ = read_records(path, fields, on_bad_line)
    return [
        text
        for batch in records.iter_batches(batch_size=None, batch_format="pyarrow")
        for text in joined_texts(batch, fields)
    ]


def check_fields(path: str, fields: list[str]) -> None:
    """Refuse a data file that lacks one of the fields the data format reads."""
    problem = None if "://" in path else missing_field(path, fields)
    if problem:
        raise SweepError(
            f"data: {problem}; set data.text_field or data.prompt_field / data.completion_field"
        )
