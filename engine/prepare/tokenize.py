"""What Ray Data's tasks run on each batch of the prepare stage: tokenize it and label its split.

Kept apart from `stage.py`, whose imports (the reference log-probabilities: torch and
transformers) each worker process would otherwise load before its first batch: several
seconds of every sweep's prepare stage on a cold cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute

from engine.core.encode import encode_examples, text_encoder
from engine.prepare.keys import KEY_BUCKETS, example_keys

if TYPE_CHECKING:
    from sweeps.config import DataConfig


def tokenize_batch(
    batch: pa.Table, data: DataConfig, model_path: str, trust_remote_code: bool, fast: bool = False
) -> pa.Table:
    """Token ids and labels for one batch; labels are IGNORE on prompt tokens.

    `fast` encodes with the `tokenizers` library alone (see `engine.core.encode`).
    """
    enc = text_encoder(model_path, trust_remote_code, fast)
    columns = [[str(v) for v in batch.column(f).to_pylist()] for f in data.fields()]
    tokens = encode_examples(enc, data.format, columns)
    keys = example_keys(["\x1f".join(parts) for parts in zip(*columns)], data.seed)
    lengths = [len(i) for i in tokens["input_ids"]]
    if "rejected_ids" in tokens:  # a preference pair trains on both of its sequences
        lengths = [n + len(r) for n, r in zip(lengths, tokens["rejected_ids"])]
    # The key's low digits pick held-out rows (`bucket`); the order uses the whole key.
    return pa.table(
        {
            "key": keys,
            "bucket": keys % KEY_BUCKETS,
            **{name: pa.array(column, pa.list_(pa.int32())) for name, column in tokens.items()},
            "n_tokens": pa.array(lengths, pa.int32()),
        }
    )


def label_split(batch: pa.Table, cut: int, task: str) -> pa.Table:
    """The task, and the split: rows whose key bucket is below `cut` are eval rows (cut 0: all
    train; KEY_BUCKETS: all eval). The bucket is the key's low digits; the order uses the whole
    key."""
    is_eval = pa.compute.less(batch["bucket"], cut)
    batch = batch.append_column("split", pa.compute.if_else(is_eval, "eval", "train"))
    return batch.append_column("task", pa.array([task] * batch.num_rows, pa.string()))
