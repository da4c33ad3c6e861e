"""Half fine-tuning (`finetune.method: hft`): in each round, part of every transformer block's
parameters trains and the rest stays frozen, bit for bit.

The blocks are the model's longest `nn.ModuleList` (Llama's `model.layers`, GPT-2's
`transformer.h`). Parameters outside them (embeddings, the final norm, the output head) are
frozen in every round. Which parameters train is drawn from a generator seeded by the trial's
seed and the round, so a resumed trial freezes what the uninterrupted one froze. A frozen
parameter has no gradient, so AdamW neither moves nor decays it.
"""

from __future__ import annotations

import random

import torch

from sweeps.config import HftConfig


def blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The model's transformer blocks: its longest `ModuleList`, with its dotted path."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError(
            "finetune.method: hft needs a model made of a list of transformer blocks; "
            f"{type(model).__name__} has none"
        )
    return max(lists, key=lambda item: len(item[1]))


def selection(model: torch.nn.Module, cfg: HftConfig, seed: int, round_: int) -> set[str]:
    """The names of the parameters that train in `round_`."""
    path, layers = blocks(model)
    rng = random.Random(f"hft-{seed}-{round_}")
    trained: set[str] = set()
    if cfg.strategy == "layers":
        count = max(1, round(cfg.fraction * len(layers)))
        for i in rng.sample(range(len(layers)), count):
            trained |= {f"{path}.{i}.{n}" for n, _ in layers[i].named_parameters()}
        return trained
    for i, layer in enumerate(layers):
        params = list(layer.named_parameters())
        rng.shuffle(params)
        target = cfg.fraction * sum(p.numel() for _, p in params)
        held = 0
        for name, param in params:
            if held >= target:
                break
            trained.add(f"{path}.{i}.{name}")
            held += param.numel()
    return trained


class HalfTuning:
    """Sets which parameters train at each step; `share` is the trained share of them all."""

    def __init__(self, model: torch.nn.Module, cfg: HftConfig, seed: int, total: int) -> None:
        self.model, self.cfg, self.seed = model, cfg, seed
        self.every = max(1, -(-total // cfg.rounds))  # steps per round, the last may be shorter
        self.round, self.share = None, 0.0

    def apply(self, step: int) -> None:
        """Freeze and unfreeze for the round that `step` (0-based) belongs to."""
        round_ = min(step // self.every, self.cfg.rounds - 1)
        if round_ == self.round:
            return
        trained = selection(self.model, self.cfg, self.seed, round_)
        total = held = 0
        for name, param in self.model.named_parameters():
            param.requires_grad_(name in trained)
            total += param.numel()
            held += param.numel() if name in trained else 0
        self.round, self.share = round_, held / total
