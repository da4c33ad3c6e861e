"""Running selection stages on Ray Data: the one place where the stages meet Ray.

Every stage works the same way. Its per-batch work (hashing, counting, checking) runs in
streaming `map_batches` tasks over the cluster's CPUs and returns small arrays (a hash or a
score per row, a count per bucket); the stage decides on the driver from those arrays which
row ids to drop; one more streaming pass drops them. Rows carry two hidden columns: `_key`, the
example key of `engine.prepare.keys.example_keys` (the data order, so data-scale prefixes stay
nested after selection), and `_row`, a random id that tells byte-identical rows apart.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from engine.prepare.keys import example_keys
from engine.prepare.selection.registry import BatchFn, StageInput, get_stage
from sweeps import SweepError
from sweeps.config import DataConfig

BATCH_ROWS = 4096
HIDDEN = ["_key", "_row"]


def apply_selection(ds, stages: list, data: DataConfig, read_texts=None):
    """(the dataset after every stage in order, one report per stage).

    `ds` has the data's fields as columns; `read_texts(path, fields)` reads a side file (the
    target sample) as joined texts. A stage that leaves no rows is an error naming the stage.
    """
    if not stages:
        return ds, []
    ds = _with_ids(ds, data.seed, data.fields())
    rows, report = ds.count(), []
    if rows == 0:
        raise SweepError(f"data.train: {data.train} has no rows to select from")
    for index, stage in enumerate(stages):
        started = time.time()
        scan = ray_scan(ds, data.fields())
        removed = run_stage(index, stage, StageInput(scan, rows, data.fields(), read_texts))
        dropped = np.unique(
            np.concatenate(
                [np.asarray(r, np.int64) for r in removed.values()] or [np.empty(0, np.int64)]
            )
        )
        _check_not_empty(index, stage, rows, len(dropped))
        ds = ds.map_batches(
            _drop_rows,
            fn_kwargs={"dropped": dropped},
            batch_format="pyarrow",
            batch_size=BATCH_ROWS,
        ).materialize()
        report.append(stage_report(stage, rows, removed, time.time() - started))
        rows -= len(dropped)
    return ds.drop_columns(HIDDEN), report


def select_locally(texts: list[str], stages: list, data: DataConfig, read_texts=None):
    """(the kept positions of `texts`, one report per stage): the same stages in this process,
    without Ray, for data small enough to hold in memory (preflight counts with it).

    `texts` are the rows' fields joined by `\x1f` (as the example key reads them); positions
    serve as row ids, and the key order decides among identical rows as on Ray.
    """
    fields = data.fields()
    keys = example_keys(texts, data.seed)
    shown = [text.replace("\x1f", "\n") for text in texts]  # the text a stage looks at
    kept, report = np.arange(len(texts)), []
    for index, stage in enumerate(stages):
        started = time.time()
        scan = local_scan([shown[i] for i in kept], keys[kept], kept, [])
        removed = run_stage(index, stage, StageInput(scan, len(kept), fields, read_texts))
        dropped = np.unique(
            np.concatenate([np.asarray(r, np.int64) for r in removed.values()] or [kept[:0]])
        )
        _check_not_empty(index, stage, len(kept), len(dropped))
        report.append(stage_report(stage, len(kept), removed, time.time() - started))
        kept = np.setdiff1d(kept, dropped)
    return kept, report


def local_scan(texts: list[str], keys: np.ndarray, rows: np.ndarray, batches: list[int]):
    """A scan over in-memory rows cut into batches at `batches` (positions), without Ray (a
    stage's result does not depend on how rows are split: a property test checks it)."""
    cuts = [0, *batches, len(texts)]

    def scan(fn: BatchFn) -> dict[str, np.ndarray]:
        parts = [fn(texts[a:b], keys[a:b], rows[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a]
        return join_parts(parts, fn)

    return scan


def run_stage(index: int, stage, data: StageInput) -> dict[str, np.ndarray]:
    """One stage's removed row ids by reason; its errors name the stage."""
    try:
        return get_stage(stage.type)(stage, data)
    except ValueError as err:
        if isinstance(err, SweepError):
            raise
        raise SweepError(f"data.select[{index}] ({stage.type}): {err}") from None


def stage_report(stage, rows_in: int, removed: dict[str, np.ndarray], seconds: float) -> dict:
    counts = {reason: int(len(ids)) for reason, ids in sorted(removed.items()) if len(ids)}
    return {
        "type": stage.type,
        "rows_in": rows_in,
        "rows_out": rows_in - sum(counts.values()),
        "removed": counts,
        "seconds": round(seconds, 3),
    }


def _check_not_empty(index: int, stage, rows: int, dropped: int) -> None:
    if dropped >= rows:
        raise SweepError(
            f"data.select[{index}] ({stage.type}): no rows left ({rows} came in, "
            "all were removed); loosen this stage or give more data"
        )


def ray_scan(ds, fields: list[str]):
    """A scan over `ds`: `fn` runs on every batch in Ray tasks; its arrays come back joined."""

    def scan(fn: BatchFn) -> dict[str, np.ndarray]:
        out = ds.map_batches(
            _scan_batch,
            fn_kwargs={"fn": fn, "fields": fields},
            batch_format="pyarrow",
            batch_size=BATCH_ROWS,
        )
        parts = list(out.iter_batches(batch_size=None, batch_format="numpy"))
        return join_parts(parts, fn)

    return scan


def join_parts(parts: list[dict], fn: BatchFn) -> dict[str, np.ndarray]:
    if not parts:  # nothing came back: the empty arrays of the right shapes
        parts = [fn([], np.empty(0, np.int64), np.empty(0, np.int64))]
    return {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}


def joined_texts(batch: pa.Table, fields: list[str], sep: str = "\n") -> list[str]:
    """The text a stage looks at: the data's fields joined (text, or prompt and completion)."""
    columns = [[str(v) for v in batch.column(f).to_pylist()] for f in fields]
    return [sep.join(parts) for parts in zip(*columns)]


def _scan_batch(batch: pa.Table, fn: BatchFn, fields: list[str]) -> dict[str, np.ndarray]:
    return fn(joined_texts(batch, fields), batch["_key"].to_numpy(), batch["_row"].to_numpy())


def _with_ids(ds, seed: int, fields: list[str]):
    """`ds` with `_key` and `_row`, held in the object store (the stages read it several times),
    in at least two blocks per CPU so every scan uses the whole cluster."""
    import ray

    def add_ids(batch: pa.Table) -> pa.Table:
        keys = example_keys(joined_texts(batch, fields, "\x1f"), seed)
        rows = np.random.default_rng().integers(0, 2**63 - 1, len(keys), dtype=np.int64)
        return batch.append_column("_key", pa.array(keys)).append_column("_row", pa.array(rows))

    ds = ds.map_batches(add_ids, batch_format="pyarrow", batch_size=BATCH_ROWS).materialize()
    blocks = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    return ds if ds.num_blocks() >= blocks else ds.repartition(blocks).materialize()


def _drop_rows(batch: pa.Table, dropped: np.ndarray) -> pa.Table:
    rows = batch["_row"].to_numpy()
    at = np.minimum(np.searchsorted(dropped, rows), max(len(dropped) - 1, 0))
    hit = dropped[at] == rows if len(dropped) else np.zeros(len(rows), dtype=bool)
    return batch.filter(pa.array(~hit))
