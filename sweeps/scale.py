"""The data-scale axis of a sweep and the settings of its scaling-law fit.

`data_scale` takes a list of sizes or `{log_range: [a, b], points: n}`; either way the validated
value is a sorted list of distinct example counts or fractions, so the rest of raysoup sees one
shape.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, Discriminator, Field, StrictInt, Tag, field_validator

from sweeps.base import Strict
from sweeps.space import TAG_MARK

Size = StrictInt | float


class LogRange(Strict):
    """`points` sizes spaced evenly in log space from the first bound to the second."""

    log_range: tuple[Size, Size] = Field(
        ..., description="[smallest, largest]: example counts or fractions in (0, 1]."
    )
    points: int = Field(
        ..., ge=2, le=100, description="How many sizes (before rounding merges any that coincide)."
    )

    @field_validator("log_range")
    @classmethod
    def _bounds(cls, value: tuple[Size, Size]) -> tuple[Size, Size]:
        low, high = value
        check_kind(list(value))
        if not low < high:
            raise ValueError(
                f"needs [smallest, largest] with smallest < largest, got {list(value)}"
            )
        return value

    def sizes(self) -> list[Size]:
        """The sizes: counts rounded to integers, fractions to 4 significant digits; distinct."""
        low, high = self.log_range
        step = (math.log(high) - math.log(low)) / (self.points - 1)
        raw = [math.exp(math.log(low) + i * step) for i in range(self.points)]
        if isinstance(low, int):
            return sorted({round(x) for x in raw})
        return sorted({float(f"{x:.4g}") for x in raw})


def check_kind(sizes: list) -> None:
    """Sizes are all counts (integers > 0) or all fractions in (0, 1]."""
    counts = all(isinstance(v, int) and v > 0 for v in sizes)
    fractions = all(isinstance(v, float) and 0 < v <= 1 for v in sizes)
    if not sizes or not (counts or fractions):
        raise ValueError(
            f"give example counts (integers > 0) or fractions in (0, 1], not a mix; got {sizes}"
        )


def _resolve(value: list[Size] | LogRange) -> list[Size]:
    sizes = value.sizes() if isinstance(value, LogRange) else value
    check_kind(sizes)
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"data sizes must be distinct, got {sizes}")
    return sorted(sizes)


def _kind(value) -> str:
    return TAG_MARK + ("log_range" if isinstance(value, (dict, LogRange)) else "sizes")


DataScale = Annotated[
    Annotated[list[Size], Tag(TAG_MARK + "sizes")]
    | Annotated[LogRange, Tag(TAG_MARK + "log_range")],
    Discriminator(_kind),
    AfterValidator(_resolve),
]


class ScalingConfig(Strict):
    """How results over the data-scale axis are fitted and extrapolated (`scaling.json`)."""

    metric: str | None = Field(
        None, description="Column of trials.parquet to fit (null: the sweep's `metric`)."
    )
    law: Literal["auto", "power", "score", "loglinear"] = Field(
        "auto",
        description="`power`: E + A * D^-alpha (losses); `score`: (a + alpha * ln D)^beta "
        "(scores that grow with data); `loglinear`: a + b * ln D. `auto`: power for losses "
        "(names ending in loss or ppl), loglinear for anything else.",
    )
    holdout: int = Field(
        1,
        ge=0,
        description="Largest sizes left out of a second fit to measure "
        "how well the law extrapolates (the held-out error).",
    )
    predict_at: list[Annotated[float, Field(gt=0)]] = Field(
        [],
        description="Data sizes (examples) at which to predict the metric; empty: ten "
        "times the largest size swept.",
    )
    target: float | None = Field(
        None, description="A metric value to reach; the fit gives the data size it needs."
    )
    bootstrap: int = Field(
        200,
        ge=0,
        description="Bootstrap resamples (seeds drawn with "
        "replacement at each size) for intervals; 0, or one seed: none.",
    )
    confidence: float = Field(0.9, gt=0, lt=1, description="Coverage of the bootstrap intervals.")
    seed: int = Field(0, description="Seed of the bootstrap draws.")

    def law_for(self, metric: str) -> str:
        """The law to fit to `metric`, resolving `auto`."""
        if self.law != "auto":
            return self.law
        return "power" if metric.endswith(("loss", "ppl")) else "loglinear"
