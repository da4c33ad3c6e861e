"""Token batches as training and evaluation feed them to a model: padding, autocast, and the
loss per row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.core.encode import IGNORE
from sweeps.evaluation import BATCH_SIZE, BATCH_TOKENS


@dataclass(frozen=True)
class Batching:
    """How evaluation cuts a run of sequences into model batches: at most `size` sequences and
    at most `tokens` tokens, padding counted (sequences x the longest); a sequence longer than
    `tokens` goes alone."""

    size: int = BATCH_SIZE
    tokens: int = BATCH_TOKENS

    def spans(self, lengths: list[int]) -> list[range]:
        """Consecutive batches of the sequences of these lengths, in order (sorted by length,
        as evaluation sorts them, they waste the least padding)."""
        out, start = [], 0
        while start < len(lengths):
            end, widest = start + 1, lengths[start]
            while end < len(lengths) and end - start < self.size:
                wider = max(widest, lengths[end])
                if wider * (end - start + 1) > self.tokens:
                    break
                end, widest = end + 1, wider
            out.append(range(start, end))
            start = end
        return out


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


def collate_pairs(data: dict, idx, seq_len: int, pad: int, device, keep_end: bool = False):
    """Rows `idx` of preference pairs as one batch of twice as many rows: the prompts with
    their chosen completions, then the same prompts with their rejected ones."""
    rows = range(len(idx))
    both = {
        "input_ids": [data["input_ids"][i] for i in idx] + [data["rejected_ids"][i] for i in idx],
        "labels": [data["labels"][i] for i in idx] + [data["rejected_labels"][i] for i in idx],
    }
    return collate(both, [*rows, *(len(idx) + r for r in rows)], seq_len, pad, device, keep_end)


def partner(i: int) -> int:
    """The example whose chosen completion row `i`'s mismatched pair takes: the one before it
    in the data order (the first takes the second's), so every data-scale subset of two or
    more examples finds its partners inside itself."""
    return 1 if i == 0 else i - 1


def collate_mismatched(data: dict, idx, seq_len: int, pad: int, device, keep_end: bool = False):
    """Rows `idx` as mismatched pairs: each prompt with its partner's chosen completion."""
    ids, labels = [], []
    for i in idx:
        prompt = sum(1 for t in data["labels"][i] if t == IGNORE)
        other = data["labels"][partner(int(i))]
        start = sum(1 for t in other if t == IGNORE)
        ids.append(data["input_ids"][i][:prompt] + data["input_ids"][partner(int(i))][start:])
        labels.append([IGNORE] * prompt + other[start:])
    both = {"input_ids": ids, "labels": labels}
    return collate(both, range(len(ids)), seq_len, pad, device, keep_end)


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed log-probability of its labelled tokens, and how many it has."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, count = token_nll(logits, batch["labels"])
    return -nll, count


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
    target = labels[:, 1:]
    # cross_entropy's fused kernel: no (batch, length, vocab) log-softmax kept for backward
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE, reduction="none"
    )
    return nll.sum(1), (target != IGNORE).sum(1)


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


def _each_batch(model, data: dict, cfg, pad: int, device, layout) -> list:
    """(summed log-probabilities, token counts) of each batch of `data`'s rows as `layout`
    (a collate function) lays them out, batched, cut and autocast as `cfg` says."""
    model.eval()
    n, out = len(data["input_ids"]), []
    for start in range(0, n, cfg.batch_size):
        idx = np.arange(start, min(start + cfg.batch_size, n))
        batch = layout(data, idx, cfg.seq_len, pad, device, cfg.truncation == "left")
        with autocast(cfg.precision, device):
            logps, counts = sequence_logps(model, batch)
        out.append((logps.float().cpu().numpy(), counts.cpu().numpy()))
    return out


@torch.no_grad()
def pair_logps(model, data: dict, cfg, pad: int, device) -> dict[str, np.ndarray]:
    """Every pair's summed log-probability of its chosen and of its rejected completion, and
    their token counts (`chosen`, `rejected`, `chosen_tokens`, `rejected_tokens`, in the data's
    order), batched, cut and autocast as `cfg` (the train settings) says."""
    parts = _each_batch(model, data, cfg, pad, device, collate_pairs)
    logps = [np.concatenate([p[0].reshape(2, -1)[k] for p in parts]) for k in (0, 1)]
    counts = [np.concatenate([p[1].reshape(2, -1)[k] for p in parts]) for k in (0, 1)]
    return {
        "chosen": logps[0],
        "rejected": logps[1],
        "chosen_tokens": counts[0],
        "rejected_tokens": counts[1],
    }


@torch.no_grad()
def mismatched_logps(model, data: dict, cfg, pad: int, device) -> np.ndarray:
    """Every row's summed log-probability of its partner's chosen completion after its own
    prompt (`collate_mismatched`), batched, cut and autocast as `cfg` says."""
    parts = _each_batch(model, data, cfg, pad, device, collate_mismatched)
    return np.concatenate([logps for logps, _ in parts])
