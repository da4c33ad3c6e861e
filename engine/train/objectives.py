"""The preference objectives' losses: pure functions of log-probabilities, registered by name.

Each takes the pairs' log-probabilities (`Pairs`: summed over each completion's labelled tokens,
with their counts, and the reference model's where the objective has one) and the
`finetune.preference` settings, and returns each pair's loss and the implicit rewards of its
chosen and rejected completions (what `reward_margin` reports). The formulas follow the papers
and TRL's implementations (checked against TRL in tests/test_objectives.py):

- `dpo`: -log σ(β·h), h = (π_c - ref_c) - (π_r - ref_r), with label smoothing ε:
  -(1-ε)·log σ(β·h) - ε·log σ(-β·h) (conservative DPO);
- `ipo`: (h' - 1/(2β))², h' the same difference of log-ratios per completion token;
- `kto`: the chosen completion as a desirable and the rejected one as an undesirable example:
  (w_d·(1 - σ(β·(π_c - ref_c - z))) + w_u·(1 - σ(β·(z - π_r + ref_r)))) / 2, where the reference
  point z is the batch's mean log-ratio on mismatched pairs (each prompt with another
  example's chosen completion), clamped at 0 and not differentiated;
- `simpo`: -log σ(β·(π̄_c - π̄_r) - γ) with label smoothing as for dpo, π̄ the log-probability
  per completion token; no reference;
- `orpo`: -β·log σ(log odds(π̄_c) - log odds(π̄_r)), plus the chosen completions' causal-LM loss
  per token (`nll_weight` 1); no reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sweeps.objectives import PreferenceConfig


@dataclass(frozen=True)
class Pairs:
    """Log-probabilities of a batch of pairs: summed over each completion's tokens."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    kl: torch.Tensor | None = None  # kto's reference point (a detached scalar); None: 0

    def mean_chosen(self) -> torch.Tensor:
        return self.chosen / self.chosen_tokens.clamp(min=1)

    def mean_rejected(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass(frozen=True)
class Terms:
    """What an objective makes of a batch: each pair's loss, each completion's implicit reward,
    and the weight of the chosen completions' token-mean causal-LM loss added to the mean of
    the pair losses."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    nll_weight: float = 0.0


ObjectiveFn = Callable[[Pairs, PreferenceConfig], Terms]
OBJECTIVES: dict[str, ObjectiveFn] = {}


def objective(name: str):
    """Register a preference objective under `name`; a name already taken is refused."""

    def register(fn: ObjectiveFn) -> ObjectiveFn:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        OBJECTIVES[name] = fn
        return fn

    return register


def get_objective(name: str) -> ObjectiveFn:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def smoothed(logits: torch.Tensor, beta: float, smoothing: float) -> torch.Tensor:
    """-(1-ε)·log σ(β·x) - ε·log σ(-β·x): the logistic loss with labels flipped at rate ε."""
    return -F.logsigmoid(beta * logits) * (1 - smoothing) - F.logsigmoid(-beta * logits) * smoothing


@objective("dpo")
def dpo(p: Pairs, cfg: PreferenceConfig) -> Terms:
    chosen, rejected = p.chosen - p.ref_chosen, p.rejected - p.ref_rejected
    losses = smoothed(chosen - rejected, cfg.beta, cfg.label_smoothing)
    return Terms(losses, cfg.beta * chosen.detach(), cfg.beta * rejected.detach())


@objective("ipo")
def ipo(p: Pairs, cfg: PreferenceConfig) -> Terms:
    chosen, rejected = p.chosen - p.ref_chosen, p.rejected - p.ref_rejected
    per_token = chosen / p.chosen_tokens.clamp(min=1) - rejected / p.rejected_tokens.clamp(min=1)
    losses = (per_token - 1 / (2 * cfg.beta)) ** 2
    return Terms(losses, cfg.beta * chosen.detach(), cfg.beta * rejected.detach())


@objective("kto")
def kto(p: Pairs, cfg: PreferenceConfig) -> Terms:
    chosen, rejected = p.chosen - p.ref_chosen, p.rejected - p.ref_rejected
    kl = p.kl if p.kl is not None else torch.zeros((), device=chosen.device)
    desirable = 1 - torch.sigmoid(cfg.beta * (chosen - kl))
    undesirable = 1 - torch.sigmoid(cfg.beta * (kl - rejected))
    losses = (cfg.desirable_weight * desirable + cfg.undesirable_weight * undesirable) / 2
    return Terms(losses, cfg.beta * chosen.detach(), cfg.beta * rejected.detach())


@objective("simpo")
def simpo(p: Pairs, cfg: PreferenceConfig) -> Terms:
    chosen, rejected = p.mean_chosen(), p.mean_rejected()
    losses = smoothed(chosen - rejected - cfg.simpo_gamma / cfg.beta, cfg.beta, cfg.label_smoothing)
    return Terms(losses, cfg.beta * chosen.detach(), cfg.beta * rejected.detach())


@objective("orpo")
def orpo(p: Pairs, cfg: PreferenceConfig) -> Terms:
    chosen, rejected = p.mean_chosen().float(), p.mean_rejected().float()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    losses = -cfg.beta * F.logsigmoid(log_odds)
    return Terms(losses, cfg.beta * chosen.detach(), cfg.beta * rejected.detach(), nll_weight=1.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2."""
    return torch.where(
        x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x))
    )
