"""Pretrain the demo's tiny Llama base model on a packed token stream."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


@dataclass(frozen=True)
class PretrainConfig:
    """Shape of the base model and of its pretraining run."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 192
    max_positions: int = 256
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 500
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    heldout_fraction: float = 0.02
    seed: int = 0
    log_every: int = 100


@dataclass(frozen=True)
class PretrainResult:
    """What the README of the base model reports."""

    model: LlamaForCausalLM
    final_train_loss: float  # mean over the last ``log_every`` steps
    heldout_loss: float
    tokens: int
    seconds: float


def llama_config(cfg: PretrainConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """The base model's architecture, with special-token ids from ``tokenizer``."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def pack(docs: list[str], tokenizer: PreTrainedTokenizerFast, seq_len: int) -> torch.Tensor:
    """Tokenize ``docs``, end each with eos, concatenate, and cut into rows of ``seq_len``."""
    # The raw backend avoids the wrapper's warning about documents longer than
    # model_max_length; packing makes their length irrelevant.
    encodings = tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False)
    stream = [i for enc in encodings for i in (*enc.ids, tokenizer.eos_token_id)]
    rows = len(stream) // seq_len
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def pretrain(
    docs: list[str], tokenizer: PreTrainedTokenizerFast, cfg: PretrainConfig
) -> PretrainResult:
    """Train a fresh Llama on ``docs`` for ``cfg.steps`` steps and return it with its losses."""
    torch.manual_seed(cfg.seed)
    blocks = pack(docs, tokenizer, cfg.seq_len)
    n_heldout = max(1, int(len(blocks) * cfg.heldout_fraction))
    train, heldout = blocks[n_heldout:], blocks[:n_heldout]
    print(
        f"[pretrain] {blocks.numel():,} tokens in {len(blocks)} rows; {n_heldout} rows held out",
        flush=True,
    )
    model = LlamaForCausalLM(llama_config(cfg, tokenizer))
    start = time.perf_counter()
    final = _train_loop(model, train, cfg)
    return PretrainResult(
        model, final, _heldout_loss(model, heldout), blocks.numel(), time.perf_counter() - start
    )


def _train_loop(model: LlamaForCausalLM, train: torch.Tensor, cfg: PretrainConfig) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, cfg))
    order = torch.Generator().manual_seed(cfg.seed)
    model.train()
    recent: list[float] = []
    for step in range(1, cfg.steps + 1):
        batch = train[torch.randint(len(train), (cfg.batch_size,), generator=order)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-cfg.log_every :]
        if step % cfg.log_every == 0:
            print(
                f"[pretrain] step {step}/{cfg.steps} loss {sum(recent) / len(recent):.3f}",
                flush=True,
            )
    return sum(recent) / len(recent)


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _heldout_loss(model: LlamaForCausalLM, heldout: torch.Tensor, batch_size: int = 64) -> float:
    model.eval()
    # Weight each batch by its rows so a short last batch does not skew the mean.
    total = sum(
        model(input_ids=b, labels=b).loss.item() * len(b) for b in heldout.split(batch_size)
    )
    return total / len(heldout)
