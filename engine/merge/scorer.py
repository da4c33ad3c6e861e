"""The score of a greedy soup's candidates: loss on the prepared selection split only."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from engine.core.batches import mean_loss
from engine.core.models import load_tokenizer
from engine.core.rundir import RunDir
from engine.prepare.splits import load_split
from sweeps import Sweep


class SelectionScorer:
    """Mean loss of a model folder on the prepared selection (`eval`) split of some tasks.

    It reads `data/<task>/eval` and nothing else: test sets are never seen by selection.
    """

    def __init__(self, sweep: Sweep, run: RunDir, tasks: list[str]):
        self.sweep = sweep
        self.sets = [load_split(run.data / task, "eval") for task in tasks]

    def __call__(self, folder) -> float:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        pad = load_tokenizer(str(folder)).pad_token_id
        losses = [
            mean_loss(model, data, self.sweep.train, pad, torch.device("cpu")) for data in self.sets
        ]
        return sum(losses) / len(losses)
