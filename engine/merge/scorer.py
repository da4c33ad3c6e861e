"""The score of a greedy soup's candidates, on the selection sets only: the sweep's `metric`
when it is an evaluation metric (accuracy, exact match, ...), else what training reports on the
prepared selection split (the loss, or the preference accuracy of preference pairs)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from engine.core.batches import mean_loss, pair_logps
from engine.core.models import load_tokenizer
from engine.core.rundir import RunDir
from engine.evaluate.local import LocalScorer
from engine.evaluate.sets import sweep_sets
from engine.prepare.splits import load_split
from sweeps import Sweep


class SelectionScorer:
    """A model folder's score on the selection sets of some tasks; `mode` says whether lower
    (`min`) or higher (`max`) wins. Test sets are never read."""

    def __init__(self, sweep: Sweep, run: RunDir, tasks: list[str]):
        self.sweep = sweep
        self.pairs = sweep.metric == "preference_accuracy" and not sweep.metric_is_evaluated()
        self.mode = sweep.direction() if sweep.metric_is_evaluated() or self.pairs else "min"
        if sweep.metric_is_evaluated():
            sets = [s for s in sweep_sets(sweep) if s.name in tasks and s.split == "selection"]
            self.local = LocalScorer(sets, sweep.metric, torch.device("cpu"))
        else:  # the loss on the prepared selection split `data/<task>/eval`
            self.local, self.sets = None, [load_split(run.data / task, "eval") for task in tasks]

    def __call__(self, folder) -> float:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        if self.local is not None:
            return self.local(model, str(folder))
        pad = load_tokenizer(str(folder)).pad_token_id
        scores = [self._score(model, data, pad) for data in self.sets]
        return sum(scores) / len(scores)

    def _score(self, model, data: dict, pad: int) -> float:
        cpu = torch.device("cpu")
        if not self.pairs:
            return mean_loss(model, data, self.sweep.train, pad, cpu)
        logps = pair_logps(model, data, self.sweep.train, pad, cpu)
        return float(np.mean(logps["chosen"] > logps["rejected"]))
