"""Reading the user's data files cheaply, without Ray: their fields, rows and malformed lines.

Every check that a file lacks a field goes through `missing_field`, so the message is the same
wherever it is found (preflight, the prepare stage, evaluation sets).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq


def source_fields(path: str) -> list[str]:
    """The field names of a data file, from its first record or its schema."""
    if path.endswith(".parquet"):
        return pq.read_schema(path).names
    with open(path, newline="") as handle:
        if path.endswith(".csv"):
            return next(csv.reader(handle), [])
        if path.endswith(".json"):
            first = json.load(handle)
            first = first[0] if isinstance(first, list) and first else first
        else:
            line = next((line for line in handle if line.strip()), "{}")
            first = json.loads(line)
    if not isinstance(first, dict):
        raise ValueError("records must be JSON objects")
    return list(first)


def is_empty(path: str) -> bool:
    """Whether a data file holds no record (no bytes, blank lines, a CSV header alone, `[]`,
    or a Parquet file of no rows)."""
    if Path(path).stat().st_size == 0:
        return True
    if path.endswith(".jsonl"):
        with open(path, "rb") as handle:
            return not any(line.strip() for line in handle)
    try:
        return count_rows(path) == 0
    except (ValueError, OSError):
        return False  # unreadable, not empty: the caller says why


def missing_field(path: str, fields: list[str], found: list[str] | None = None) -> str | None:
    """What to say when the file at `path` lacks one of `fields` (its `found` fields, read
    when not given); None when it has them all."""
    found = source_fields(path) if found is None else found
    missing = [f for f in fields if f not in found]
    if not missing:
        return None
    return f"{path} has no field {missing[0]!r}; its fields: {', '.join(found)}"


def count_rows(path: str) -> int:
    """Rows in a data file, cheaply (Parquet metadata, or a line count)."""
    if path.endswith(".parquet"):
        return pq.ParquetFile(path).metadata.num_rows
    if path.endswith(".json"):
        return len(json.loads(Path(path).read_text()))
    with open(path, "rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines - 1 if path.endswith(".csv") else lines


def read_rows(path: str, limit: int | None = None) -> list[dict]:
    """Records of a .jsonl, .json, .parquet or .csv file; `limit` keeps the first n."""
    if path.endswith(".parquet"):
        table = pq.read_table(path)
        return (table.slice(0, limit) if limit else table).to_pylist()
    with open(path, newline="") as handle:
        if path.endswith(".csv"):
            rows = list(csv.DictReader(handle))
        elif path.endswith(".json"):
            rows = json.load(handle)
        else:
            rows = [json.loads(line) for line in handle if line.strip()]
    return rows[:limit] if limit else rows


@dataclass
class BadLines:
    """Malformed lines of a JSONL file: how many, and the first one."""

    count: int = 0
    first_line: int = 0
    first_reason: str = ""


def scan_jsonl(path: str, fields: list[str]) -> BadLines:
    """Every line that is not a JSON object with `fields` (blank lines are allowed)."""
    bad = BadLines()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            reason = line_problem(line, fields)
            if reason:
                bad.count += 1
                if bad.count == 1:
                    bad.first_line, bad.first_reason = number, reason
    return bad


def line_problem(line: str, fields: list[str]) -> str:
    """Why a JSONL line is not a usable record ('' when it is, or is blank)."""
    if not line.strip():
        return ""
    try:
        record = json.loads(line)
    except ValueError as err:
        return f"not valid JSON ({err})"
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [f for f in fields if record.get(f) is None]
    return f"has no field {missing[0]!r} (or it is null)" if missing else ""
