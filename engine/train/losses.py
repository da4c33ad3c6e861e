"""What a trial minimises, as the training loop sees it.

A loss turns rows of the prepared data into a micro-batch, says how many units the step's loss
is a mean over (`counts`, summed over the step's micro-batches and the worker group's ranks
before any loss is computed), and gives a micro-batch's share of that mean, so gradient
accumulation and data parallelism leave the gradient of the step's mean unchanged:

- `TokenLoss` (`finetune.objective: sft`): the causal-LM loss per labelled token;
- `PairLoss` (a preference objective): the objective's loss per pair
  (`engine.train.objectives`), plus, for `orpo`, the chosen completions' loss per token.

`preference_metrics` scores a model on the prepared selection split of preference data:
`preference_accuracy` (the share of pairs whose chosen completion has the higher
log-probability, as the evaluate stage's metric of that name) and `reward_margin` (the mean of
the objective's implicit reward of the chosen completion minus that of the rejected one).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from engine.core.batches import (
    collate,
    collate_mismatched,
    collate_pairs,
    pair_logps,
    sequence_logps,
)
from engine.core.encode import IGNORE
from engine.prepare.reference import load_reference
from engine.train.objectives import Pairs, get_objective
from sweeps import Sweep
from sweeps.objectives import NEEDS_MISMATCHED, NEEDS_REFERENCE


class TokenLoss:
    """The causal-LM loss of the labelled tokens (the completion's, or every token's)."""

    def __init__(self, sweep: Sweep, pad: int, device: torch.device) -> None:
        self.cfg, self.pad, self.device = sweep.train, pad, device

    def batch(self, data: dict, idx: np.ndarray) -> dict:
        cfg = self.cfg
        return collate(data, idx, cfg.seq_len, self.pad, self.device, cfg.truncation == "left")

    def counts(self, batch: dict) -> list[int]:
        return [int((batch["labels"][:, 1:] != IGNORE).sum())]

    def loss(self, model, batch: dict, totals: list[float]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        summed = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2),
            batch["labels"][:, 1:],
            ignore_index=IGNORE,
            reduction="sum",
        )
        return summed / max(totals[0], 1)


class PairLoss:
    """A preference objective's loss per pair of the step (the reference model's
    log-probabilities read from what prepare computed)."""

    def __init__(self, sweep: Sweep, pad: int, device: torch.device, reference=None) -> None:
        self.cfg, self.pad, self.device = sweep.train, pad, device
        self.name = sweep.finetune.objective
        self.fn, self.settings = get_objective(self.name), sweep.finetune.preference
        self.reference = reference  # {"ref_chosen", "ref_rejected"} of the training rows

    def batch(self, data: dict, idx: np.ndarray) -> dict:
        cut = (self.cfg.seq_len, self.pad, self.device, self.cfg.truncation == "left")
        batch = collate_pairs(data, idx, *cut)
        if self.name in NEEDS_MISMATCHED:
            batch["mismatched"] = collate_mismatched(data, idx, *cut)
        if self.reference is not None:
            for name, values in self.reference.items():
                batch[name] = torch.as_tensor(values[idx], dtype=torch.float32, device=self.device)
        return batch

    def counts(self, batch: dict) -> list[int]:
        chosen = batch["labels"][: len(batch["labels"]) // 2, 1:]
        return [len(chosen), int((chosen != IGNORE).sum())]

    def loss(self, model, batch: dict, totals: list[float]) -> torch.Tensor:
        logps, tokens = sequence_logps(model, batch)
        pairs = Pairs(
            *logps.float().chunk(2),
            *tokens.chunk(2),
            batch.get("ref_chosen"),
            batch.get("ref_rejected"),
        )
        if "mismatched" in batch:
            pairs = dataclasses.replace(pairs, kl=self._kl(model, batch))
        terms = self.fn(pairs, self.settings)
        loss = terms.losses.sum() / max(totals[0], 1)
        if terms.nll_weight:
            loss = loss - terms.nll_weight * pairs.chosen.sum() / max(totals[1], 1)
        return loss

    @staticmethod
    def _kl(model, batch: dict) -> torch.Tensor:
        """kto's reference point: the micro-batch's mean log-ratio of the policy to the
        reference on mismatched pairs, at least 0, with no gradient (as in TRL)."""
        with torch.no_grad():
            logps, _ = sequence_logps(model, batch["mismatched"])
        return (logps.float() - batch["ref_mismatched"]).mean().clamp(min=0)


def build_loss(sweep: Sweep, data_dir, rows: int, pad: int, device: torch.device):
    """The loss of a trial (`sweep` with its values filled in) training on the first `rows`
    examples of the prepared training split in `data_dir`."""
    if sweep.finetune.objective == "sft":
        return TokenLoss(sweep, pad, device)
    reference = None
    if sweep.finetune.objective in NEEDS_REFERENCE:
        reference = load_reference(data_dir, "train", sweep.train.seq_len, rows)
    return PairLoss(sweep, pad, device, reference)


def preference_metrics(model, evals: dict, sweep: Sweep, data_dir, pad: int, device) -> dict:
    """`preference_accuracy` and, for a preference objective, `reward_margin` of a model on
    the prepared selection split."""
    logps = pair_logps(model, evals, sweep.train, pad, device)
    out = {"preference_accuracy": float(np.mean(logps["chosen"] > logps["rejected"]))}
    objective = sweep.finetune.objective
    if objective == "sft":
        return out
    reference = {}
    if objective in NEEDS_REFERENCE:
        rows = len(logps["chosen"])
        reference = load_reference(data_dir, "eval", sweep.train.seq_len, rows)
    tensors = {
        k: torch.as_tensor(v, dtype=torch.float32) for k, v in {**logps, **reference}.items()
    }
    pairs = Pairs(
        tensors["chosen"],
        tensors["rejected"],
        tensors["chosen_tokens"],
        tensors["rejected_tokens"],
        tensors.get("ref_chosen"),
        tensors.get("ref_rejected"),
    )
    terms = get_objective(objective)(pairs, sweep.finetune.preference)  # its rewards only
    out["reward_margin"] = float((terms.chosen_rewards - terms.rejected_rewards).mean())
    return out
