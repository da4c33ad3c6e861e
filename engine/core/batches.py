"""Token batches as training and evaluation feed them to a model: padding, autocast, and the
loss per row."""

from __future__ import annotations

import numpy as np
import torch

from engine.core.encode import IGNORE


def collate(data: dict, idx, seq_len: int, pad: int, device, keep_end: bool = False) -> dict:
    """Rows `idx` of `data` (`input_ids`, `labels`: lists of token lists) cut to `seq_len`
    tokens (their first ones, or with `keep_end` their last ones) and right-padded into tensors
    on `device`, with the attention mask."""
    cut = slice(-seq_len, None) if keep_end else slice(0, seq_len)
    ids = [data["input_ids"][i][cut] for i in idx]
    labels = [data["labels"][i][cut] for i in idx]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    label_t = torch.full((len(ids), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, (x, y) in enumerate(zip(ids, labels)):
        input_ids[row, : len(x)] = torch.tensor(x)
        label_t[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return {
        "input_ids": input_ids.to(device),
        "labels": label_t.to(device),
        "attention_mask": mask.to(device),
    }


def autocast(precision: str, device: torch.device):
    """The autocast context of a precision setting (`fp32`: none)."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(
        device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16
    )


def token_nll(logits, labels):
    """Per-row summed negative log-likelihood of the labels, and the number of labelled tokens.

    `logits` is (batch, length, vocab) and `labels` (batch, length) with IGNORE where no token
    is predicted; position t's logits predict label t + 1, as in Hugging Face causal LMs.
    """
    logp = logits[:, :-1].float().log_softmax(-1)
    target = labels[:, 1:]
    mask = target != IGNORE
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum(1), mask.sum(1)


@torch.no_grad()
def mean_loss(model, data: dict, cfg, pad: int, device) -> float:
    """Mean loss per predicted token over every example of `data` (a prepared split), batched
    as `cfg` (the train settings) says; NaN when no example has a labelled token."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data["input_ids"]), cfg.batch_size):
        idx = np.arange(start, min(start + cfg.batch_size, len(data["input_ids"])))
        batch = collate(data, idx, cfg.seq_len, pad, device, cfg.truncation == "left")
        with autocast(cfg.precision, device):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE, reduction="sum"
        )
        total += loss.item()
        count += int((labels != IGNORE).sum())
    return total / count if count else float("nan")  # no labelled token: no loss to report
