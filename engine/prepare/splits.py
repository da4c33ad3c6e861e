"""Reading a prepared split (`data/<task>/<split>/*.parquet`) back, in the sweep's order."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from sweeps import SweepError

# The token columns of a prepared example (the last two for preference pairs only).
TOKEN_COLUMNS = ("input_ids", "labels", "rejected_ids", "rejected_labels")


def load_split(run_data: Path, split: str, limit: int | None = None) -> dict[str, list]:
    """Examples of a prepared split in the sweep's order, as lists of token lists by column
    (`input_ids`, `labels`; preference pairs add `rejected_ids`, `rejected_labels`); `limit`
    takes the first n (a subset)."""
    table = pq.read_table(run_data / split).sort_by("key")
    if limit is not None:
        if limit > table.num_rows:
            raise SweepError(
                f"data_scale: {limit} examples asked, but the prepared {split} set "
                f"has {table.num_rows}"
            )
        table = table.slice(0, limit)
    return {name: table[name].to_pylist() for name in TOKEN_COLUMNS if name in table.column_names}
