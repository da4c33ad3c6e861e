"""Trial schedulers: which running trials Ray Tune stops early, chosen by `scheduler.type`.

A scheduler compares trials by the sweep's `metric` at each report (every
`train.eval_every` optimizer steps) and stops the ones that fall behind. A stopped trial is a
result like a finished one: its newest complete checkpoint is a candidate for merges and
evaluation, and `trials.parquet` says when and why it stopped (docs/search.md).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from sweeps.base import Strict
from sweeps.trials import configurations

PositiveInt = Annotated[int, Field(gt=0)]
Time = Literal["step", "examples_seen"]
TIME_HELP = (
    "What the scheduler's times count: `step` (optimizer steps) or `examples_seen` "
    "(training examples, the same across batch sizes)."
)
GRACE_HELP = (
    "Time (in `time` units) before a trial can be stopped; null: its first report "
    "(`train.eval_every` steps)."
)


class SchedulerConfig(Strict):
    def stops_trials(self) -> bool:
        """Whether this scheduler may end a trial before its last step."""
        return True


class Fifo(SchedulerConfig):
    """Every trial runs to its end (the default)."""

    type: Literal["fifo"] = Field(..., description="`fifo`.")

    def stops_trials(self) -> bool:
        return False


class Asha(SchedulerConfig):
    """ASHA, asynchronous successive halving (Tune's `AsyncHyperBandScheduler`).

    At each rung (`grace_period` times powers of `reduction_factor`) a trial continues only if
    its metric is in the best 1/`reduction_factor` of the trials that reached the rung so far.
    """

    type: Literal["asha"] = Field(..., description="`asha`.")
    time: Time = Field("step", description=TIME_HELP)
    grace_period: PositiveInt | None = Field(None, description=GRACE_HELP)
    reduction_factor: Annotated[float, Field(gt=1)] = Field(
        4.0, description="Keep the best 1/reduction_factor of the trials at each rung."
    )
    max_t: PositiveInt | None = Field(
        None,
        description="The longest a trial trains (in `time` units); null: no limit, each "
        "trial ends at its own last step.",
    )
    brackets: PositiveInt = Field(
        1, description="Brackets of different grace periods (1: plain ASHA; more: async HyperBand)."
    )

    @model_validator(mode="after")
    def _grace_within_max(self):
        if self.grace_period and self.max_t and self.grace_period > self.max_t:
            raise ValueError(
                f"grace_period {self.grace_period} exceeds max_t {self.max_t}; a trial "
                "would reach its end before it could be stopped"
            )
        return self


class Median(SchedulerConfig):
    """The median stopping rule (Tune's `MedianStoppingRule`).

    A trial whose best metric so far is worse than the median of the other trials' running
    means at the same time is stopped.
    """

    type: Literal["median"] = Field(..., description="`median`.")
    time: Time = Field("step", description=TIME_HELP)
    grace_period: PositiveInt | None = Field(None, description=GRACE_HELP)
    min_samples_required: PositiveInt = Field(
        3, description="Other trials that must have reached the same time before any is stopped."
    )


SCHEDULERS = (Fifo, Asha, Median)
SCHEDULER_TYPES = tuple(s.model_fields["type"].annotation.__args__[0] for s in SCHEDULERS)
Scheduler = Annotated[Union[SCHEDULERS], Field(discriminator="type")]  # noqa: UP007 (a tuple)


def check_scheduler_type(value):
    """Name an unknown or missing `type` with the known ones (before pydantic's union error)."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind not in SCHEDULER_TYPES:
        raise ValueError(
            f"type: unknown scheduler type {kind!r}; known: {', '.join(SCHEDULER_TYPES)} "
            "(hyperband: use asha with brackets > 1, its asynchronous form; pbt and pb2 are "
            "not supported yet)"
        )
    return value


def first_report(sweep, time: str) -> int:
    """When the trials of `sweep` (a `Sweep`: this module sits below `sweeps.config`) first
    report, in `time` units: `train.eval_every` steps, or the examples those steps take in the
    configuration with the smallest batches."""
    steps = sweep.train.eval_every
    if time == "step":
        return steps
    workers = sweep.resources.workers
    if sweep.search.learns():  # no configuration yet: the smallest the spaces allow
        batch = ("train.batch_size", "train.grad_accum")
        candidates = [{p: _lowest(s) for p, s in sweep.search_space().items() if p in batch}]
    else:
        candidates = [c.values for c in configurations(sweep)]
    return min(
        steps * t.batch_size * t.grad_accum * workers
        for t in (sweep.for_trial(values).train for values in candidates)
    )


def _lowest(space) -> int:
    values = space.values()
    return min(values) if values else space.bounds()[0]


def check_grace(sweep) -> None:
    """Refuse a `max_t` that ends trials before the default grace period (their first report)."""
    config = sweep.scheduler
    if getattr(config, "max_t", None) is None or config.grace_period is not None:
        return
    grace = first_report(sweep, config.time)
    if config.max_t < grace:
        raise ValueError(
            f"scheduler.max_t: {config.max_t} ends trials before their first report "
            f"({grace} {config.time}, from train.eval_every); raise max_t or set grace_period"
        )
