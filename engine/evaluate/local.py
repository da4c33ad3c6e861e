"""Scoring a model in this process, without Ray: the evaluation actor's own code, on a model the
caller already holds (a trial's model while it trains, a greedy soup's candidate), so a trial's
`metric` and a greedy soup's choices can be any metric of the selection sets and give the
numbers the evaluate stage would give for the same model."""

from __future__ import annotations

import math

import torch

from engine.core.encode import text_encoder
from engine.core.models import load_tokenizer
from engine.evaluate.metrics import get_metric
from engine.evaluate.sets import by_length, plan_file_set
from engine.evaluate.worker import EvalActor, Loaded
from sweeps.evaluation import BATCH_SIZE, BATCH_TOKENS, EvalSetConfig


class LocalScorer:
    """`metric` of a model on `sets`, the mean over the sets (the leaderboard's selection
    score), computed here with the evaluation actor's code."""

    def __init__(
        self,
        sets: list[EvalSetConfig],
        metric: str,
        device: torch.device,
        precision: str = "fp32",
        batch_size: int = BATCH_SIZE,
        batch_tokens: int = BATCH_TOKENS,
    ) -> None:
        self.metric = get_metric(metric)
        self.plans = [plan_file_set(s.model_copy(update={"metrics": [metric]})) for s in sets]
        specs = [plan.spec for plan in self.plans]
        self.actor = EvalActor(
            [], specs, str(device), torch.get_num_threads(), precision, batch_size, batch_tokens
        )
        self._tokenizers: dict[str, tuple] = {}  # loaded once per folder: a trial scores often

    def __call__(self, model, tokenizer_path: str, trust_remote_code: bool = False) -> float:
        """The metric of `model` (left in the mode it came in), tokenized as `tokenizer_path`."""
        if tokenizer_path not in self._tokenizers:
            self._tokenizers[tokenizer_path] = (
                load_tokenizer(tokenizer_path, trust_remote_code),
                text_encoder(tokenizer_path, trust_remote_code, False),
            )
        loaded = Loaded(model, *self._tokenizers[tokenizer_path])
        training = model.training
        model.eval()
        try:
            scores = [
                self.metric.score(
                    self.actor.observe(loaded, by_length(plan), plan.needs, self.actor.sets[i])[0]
                )
                for i, plan in enumerate(self.plans)
            ]
        finally:
            model.train(training)
        return sum(scores) / len(scores) if scores else math.nan
