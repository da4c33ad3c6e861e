"""Reading a prepared split (`data/<task>/<split>/*.parquet`) back, in the sweep's order."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from sweeps import SweepError


def load_split(run_data: Path, split: str, limit: int | None = None) -> dict[str, list]:
    """Examples of a prepared split in the sweep's order; `limit` takes the first n (a subset)."""
    table = pq.read_table(run_data / split).sort_by("key")
    if limit is not None:
        if limit > table.num_rows:
            raise SweepError(
                f"data_scale: {limit} examples asked, but the prepared {split} set "
                f"has {table.num_rows}"
            )
        table = table.slice(0, limit)
    return {"input_ids": table["input_ids"].to_pylist(), "labels": table["labels"].to_pylist()}
