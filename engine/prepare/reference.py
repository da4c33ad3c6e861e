"""The reference model's log-probabilities of every preference pair, computed once per sweep.

The objectives `dpo`, `ipo` and `kto` compare a trial's log-probabilities of a pair's chosen
and rejected completions (and, for `kto`, of its mismatched pair: the prompt with another
example's chosen completion, `engine.core.batches.collate_mismatched`) with the reference
model's: the base model's, which no trial changes. So prepare computes them once, for every
task's train and selection splits and for each sequence length the sweep trains with (cut the
way `train.truncation` cuts, batched as trials batch), and writes them beside the split, in its
order (`data/<task>/reference/<split>-<seq_len>.parquet`). Trials read them instead of holding
a second model in memory or running it at every step. The scoring runs as one Ray task per task
with a trial's resources (its GPUs, where trials have them).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM

from engine.core.batches import mismatched_logps, pair_logps
from engine.core.models import load_tokenizer
from engine.prepare.splits import load_split
from sweeps import Sweep, SweepError
from sweeps.config import TrainConfig
from sweeps.objectives import needs_mismatched, needs_reference
from sweeps.space import Space

REFERENCE = "reference"  # the folder beside a task's splits


def settings(sweep: Sweep) -> dict | None:
    """What the reference log-probabilities depend on; None when no objective needs them."""
    if not needs_reference(sweep.finetune.objective):
        return None
    train = sweep.train
    fixed = {k: getattr(train, k) for k in ("seq_len", "batch_size", "precision")}
    seq_lens = fixed["seq_len"].values() if isinstance(fixed["seq_len"], Space) else [train.seq_len]
    return {
        "seq_lens": sorted(set(seq_lens)),
        "truncation": train.truncation,
        "batch_size": 8 if isinstance(fixed["batch_size"], Space) else train.batch_size,
        # Autocast as trials train when the sweep fixes it; fp32 when it searches precision.
        "precision": "fp32" if isinstance(fixed["precision"], Space) else train.precision,
        "mismatched": needs_mismatched(sweep.finetune.objective),
    }


def compute(sweep: Sweep, data_dir: Path, model_path: str) -> dict | None:
    """Score every task's splits with the base model (on Ray); the manifest's entry."""
    import ray  # imported here: the rest of prepare's helpers run without Ray

    wanted = settings(sweep)
    if wanted is None:
        return None
    started = time.time()
    res = sweep.resources
    task = ray.remote(score_task).options(
        num_cpus=res.cpus_per_trial, num_gpus=res.gpus_per_trial, max_retries=0
    )
    trust = sweep.model.trust_remote_code
    ray.get([task.remote(str(data_dir / t), model_path, wanted, trust) for t in sweep.task_names()])
    return {**wanted, "seconds": round(time.time() - started, 2)}


def score_task(folder: str, model_path: str, wanted: dict, trust_remote_code: bool) -> None:
    """Write the reference log-probabilities of one task's train and eval splits."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32, trust_remote_code=trust_remote_code
    ).to(device)
    pad = load_tokenizer(model_path, trust_remote_code).pad_token_id
    out = Path(folder) / REFERENCE
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "eval"):
        data = load_split(Path(folder), split)
        for seq_len in wanted["seq_lens"]:
            cut = {k: wanted[k] for k in ("batch_size", "truncation", "precision")}
            cut = TrainConfig(seq_len=seq_len, **cut)
            logps = pair_logps(model, data, cut, pad, device)
            columns = {"ref_chosen": logps["chosen"], "ref_rejected": logps["rejected"]}
            if wanted["mismatched"]:
                columns["ref_mismatched"] = mismatched_logps(model, data, cut, pad, device)
            table = pa.table(columns)
            path = out / f"{split}-{seq_len}.parquet"
            staged = path.with_name(f".{path.name}.tmp")
            pq.write_table(table, staged)
            staged.replace(path)  # a reader sees the whole file or none


def load_reference(folder: Path, split: str, seq_len: int, rows: int) -> dict[str, np.ndarray]:
    """The first `rows` pairs' reference log-probabilities (`ref_chosen`, `ref_rejected`, and
    for kto `ref_mismatched`) of a prepared split, in its order."""
    path = folder / REFERENCE / f"{split}-{seq_len}.parquet"
    if not path.is_file():
        raise SweepError(
            f"data: no reference log-probabilities for seq_len {seq_len} in {path.parent}; "
            "prepare the data again (delete the run's data/manifest.json)"
        )
    table = pq.read_table(path)
    if table.num_rows < rows:
        raise SweepError(f"data: {path} holds {table.num_rows} pairs, fewer than {rows}")
    return {name: table[name].to_numpy()[:rows].copy() for name in table.column_names}
