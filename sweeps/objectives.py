"""Training objectives: the causal-LM loss (`sft`) and the preference objectives that train
on pairs of a chosen and a rejected completion (see docs/methods.md).

Which objectives need the reference model's log-probabilities, and which compare
length-normalised log-probabilities, is said here once; the loss math lives in
`engine.train.objectives`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from sweeps.base import Strict
from sweeps.space import Space, searchable

Objective = Literal["sft", "dpo", "ipo", "kto", "simpo", "orpo"]
PREFERENCE_OBJECTIVES = ("dpo", "ipo", "kto", "simpo", "orpo")
NEEDS_REFERENCE = ("dpo", "ipo", "kto")  # the others are reference-free
# kto's reference point, an estimate of the KL divergence from the reference, is measured on
# mismatched pairs: each prompt with another example's chosen completion.
NEEDS_MISMATCHED = ("kto",)
# What training reports on the selection split of preference data (docs/methods.md).
PREFERENCE_METRICS = ("preference_accuracy", "reward_margin")

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Smoothing = Annotated[float, Field(ge=0, lt=0.5)]


class PreferenceConfig(Strict):
    """Settings of the preference objectives (`finetune.objective` dpo, ipo, kto, simpo,
    orpo)."""

    beta: searchable(PositiveFloat) = Field(
        0.1,
        description="dpo: the inverse temperature of the implicit reward (strength of the pull "
        "towards the reference); ipo: its regularisation (the target margin is 1 / (2 beta)); "
        "kto: the scale of the log-ratios in its value function; simpo: the reward scale; "
        "orpo: the weight of the odds-ratio term beside the chosen completion's loss.",
    )
    label_smoothing: searchable(Smoothing) = Field(
        0.0,
        description="dpo and simpo: the assumed share of pairs whose labels are flipped "
        "(conservative DPO); 0: none.",
    )
    simpo_gamma: searchable(NonNegFloat) = Field(
        0.5, description="simpo: the target reward margin (gamma)."
    )
    desirable_weight: searchable(PositiveFloat) = Field(
        1.0, description="kto: the weight of the chosen completions' losses."
    )
    undesirable_weight: searchable(PositiveFloat) = Field(
        1.0, description="kto: the weight of the rejected completions' losses."
    )


def objectives_of(value) -> list[str]:
    """The objectives a field's value or search space can take."""
    return list(value.values()) if isinstance(value, Space) else [value]


def needs_reference(objective) -> bool:
    """Whether any objective `objective` can take needs the reference log-probabilities."""
    return any(o in NEEDS_REFERENCE for o in objectives_of(objective))


def is_preference(objective) -> bool:
    """Whether any objective `objective` can take trains on preference pairs."""
    return any(o in PREFERENCE_OBJECTIVES for o in objectives_of(objective))


def needs_mismatched(objective) -> bool:
    """Whether any objective `objective` can take measures mismatched pairs (kto)."""
    return any(o in NEEDS_MISMATCHED for o in objectives_of(objective))
