"""Trial schedulers: which running trials Ray Tune stops early, chosen by `scheduler.type`.

A scheduler compares trials by the sweep's `metric` at each report (every
`train.eval_every` optimizer steps) and stops the ones that fall behind. A stopped trial is a
result like a finished one: its newest complete checkpoint is a candidate for merges and
evaluation, and `trials.parquet` says when and why it stopped (docs/search.md).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, model_validator

from sweeps.base import Strict
from sweeps.space import SPACES, Space
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

    def pauses_trials(self) -> bool:
        """Whether this scheduler may pause a trial and continue it later."""
        return False


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


class HyperBand(SchedulerConfig):
    """Synchronous HyperBand, the scheduler of `search.type: bohb` (Tune's `HyperBandForBOHB`).

    Brackets of trials train to a budget and are paused there; once a bracket's trials all got
    there, the best 1/`reduction_factor` continue (each from the checkpoint of its report at
    the budget) and the others stop. BOHB learns from every result at each budget.
    """

    type: Literal["hyperband"] = Field(..., description="`hyperband`.")
    time: Time = Field("step", description=TIME_HELP)
    max_t: PositiveInt | None = Field(
        None,
        description="The largest budget (in `time` units), from which the brackets' smaller "
        "ones are cut; null: `train.max_steps` (with `time: step`).",
    )
    reduction_factor: Annotated[float, Field(gt=1)] = Field(
        3.0, description="Keep the best 1/reduction_factor of a bracket's trials at each budget."
    )

    def pauses_trials(self) -> bool:
        return True


RANGES = ("uniform", "loguniform", "randint")


def mutation_space(path: str, space: list | dict) -> list | Space:
    """A mutation's space: its list of values, or the range (a `Space`) it stays within."""
    if isinstance(space, list):
        if not space:
            raise ValueError(f"{path}: an empty list of values")
        return space
    key = next(iter(space)) if len(space) == 1 else None
    if key in ("grid", "choice"):
        return list(SPACES[key].model_validate(space).values())
    if key not in RANGES:
        raise ValueError(
            f"{path}: a list of values or a range ({{{' | '.join(RANGES)}: [low, high]}}), "
            f"got {space}"
        )
    return SPACES[key].model_validate(space)


def bound_space(path: str, space: dict) -> Space:
    """A pb2 bound: a range only (its bandit models values on a line)."""
    found = mutation_space(path, space)
    if isinstance(found, list):
        raise ValueError(
            f"{path}: pb2 chooses values inside a range ({{{' | '.join(RANGES)}: [low, high]}}), "
            f"not from a list ({space}); use pbt for a list of values"
        )
    return found


class Population(SchedulerConfig):
    """What population-based training (`pbt`, `pb2`) shares: when trials are compared, who
    clones whom, and the checkpoints a clone continues from."""

    type: str
    perturbation_interval: PositiveInt = Field(
        ...,
        description="Optimizer steps between a trial's chances to clone another; a multiple of "
        "`train.eval_every`.",
    )
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5)] = Field(
        0.25, description="The share of the population that clones, and that is cloned."
    )
    synch: bool = Field(
        False,
        description="Wait for every trial at each perturbation and compare them at the same "
        "step (Tune's synchronous PBT); false: each trial compares with the others' last "
        "scores when it gets there.",
    )
    seed: int = Field(0, description="Seed of the choice of whom to clone and how to perturb.")

    FIELD: ClassVar[str] = ""  # the field that names the perturbed values and their spaces
    space: ClassVar[Callable[[str, Any], list | Space]]  # one of them read from that field

    @model_validator(mode="after")
    def _spaces(self):
        for path, raw in getattr(self, self.FIELD).items():
            self.space(f"{self.FIELD}.{path}", raw)
        return self

    def perturbed(self) -> dict[str, list | Space]:
        """The searched fields a clone changes, each with the space it stays in."""
        return {path: self.space(path, raw) for path, raw in getattr(self, self.FIELD).items()}

    def stops_trials(self) -> bool:
        return False

    def pauses_trials(self) -> bool:
        return True


class Pbt(Population):
    """Population-based training (Tune's `PopulationBasedTraining`, exploiting through
    raysoup's own checkpoints).

    Every `perturbation_interval`, a trial in the bottom `quantile_fraction` of the population
    by `metric` clones a top trial: it continues from that trial's newest checkpoint (weights
    and optimizer state), with the top trial's searched values perturbed as `mutations` say.
    Its own checkpoints are discarded then (they belong to the state it gave up), and
    `trials.parquet` records each clone: which trial, at which step.
    """

    type: Literal["pbt"] = Field(..., description="`pbt`.")
    mutations: dict[str, list[Any] | dict[str, Any]] = Field(
        ...,
        min_length=1,
        description="The searched fields a clone perturbs, by dotted path, each with the space "
        "it may take: a range (`{loguniform: [1.0e-5, 1.0e-3]}`: a clone multiplies the value "
        "by 0.8 or 1.2, within the range, or draws anew) or a list of values (a clone moves to "
        "a neighbour, or draws anew).",
    )
    resample_probability: Annotated[float, Field(ge=0, le=1)] = Field(
        0.25, description="The chance that a clone draws a mutated value anew from its space."
    )

    FIELD: ClassVar[str] = "mutations"
    space = staticmethod(mutation_space)


class Pb2(Population):
    """Population-based bandits (Tune's `PB2`, exploiting through raysoup's own checkpoints).

    Like `pbt`, a trial in the bottom `quantile_fraction` clones a top trial's checkpoint every
    `perturbation_interval`; the values it continues with are not random perturbations but
    chosen by a Gaussian-process bandit fit to how each trial's metric changed per step with
    its values (Parker-Holder et al., 2020). Each value stays inside its range in `bounds`; a
    log-uniform range is explored on the log scale.
    """

    type: Literal["pb2"] = Field(..., description="`pb2`.")
    bounds: dict[str, dict[str, Any]] = Field(
        ...,
        min_length=1,
        description="The searched fields a clone chooses anew, by dotted path, each with its "
        "range: `{uniform: [low, high]}`, `{loguniform: [low, high]}` (explored on the log "
        "scale) or `{randint: [low, high]}`.",
    )

    FIELD: ClassVar[str] = "bounds"
    space = staticmethod(bound_space)


SCHEDULERS = (Fifo, Asha, Median, HyperBand, Pbt, Pb2)
SCHEDULER_TYPES = tuple(s.model_fields["type"].annotation.__args__[0] for s in SCHEDULERS)
Scheduler = Annotated[Union[SCHEDULERS], Field(discriminator="type")]  # noqa: UP007 (a tuple)


def check_scheduler_type(value):
    """Name an unknown or missing `type` with the known ones (before pydantic's union error)."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind not in SCHEDULER_TYPES:
        raise ValueError(
            f"type: unknown scheduler type {kind!r}; known: {', '.join(SCHEDULER_TYPES)}"
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


def check_pbt(sweep) -> None:
    """Refuse what population-based training (pbt, pb2) cannot do soundly: a population that
    mixes tasks, data sizes or seeds (a clone would take another replicate's weights),
    perturbed fields that are not searched, perturbations between reports, and checkpoints
    that are not saved at each report (a clone starts from the top trial's checkpoint of its
    last report)."""
    config = sweep.scheduler
    if not isinstance(config, Population):
        return
    kind = config.type
    if kind == "pb2" and importlib.util.find_spec("sklearn") is None:
        raise ValueError(
            "scheduler.type: pb2 needs the package 'scikit-learn', which is not installed: "
            "pip install 'raysoup[search]'"
        )
    axes = {
        "tasks": len(sweep.task_names()),
        "data_scale": len(sweep.data_scale or [None]),
        "seeds": len(sweep.seeds),
    }
    mixed = [f"{name} ({count})" for name, count in axes.items() if count > 1]
    if mixed:
        raise ValueError(
            f"scheduler.type: {kind}'s population must be one task, data size and seed, or a "
            f"clone would take another replicate's weights; this sweep has several "
            f"{', '.join(mixed)}"
        )
    if sweep.search.learns():
        raise ValueError(
            f"scheduler.type: {kind} chooses its own configurations; search.type "
            f"{sweep.search.type} would too (use grid or random for the first population)"
        )
    searched = sweep.search_space()
    for path in config.perturbed():
        if path not in searched:
            raise ValueError(
                f"scheduler.{config.FIELD}.{path}: not a searched field; give it a space in the "
                f"sweep (searched: {', '.join(searched) or 'none'})"
            )
    every = sweep.train.eval_every
    if config.perturbation_interval % every:
        raise ValueError(
            f"scheduler.perturbation_interval: {config.perturbation_interval} is not a multiple "
            f"of train.eval_every ({every}): trials are compared at their reports"
        )
    if sweep.checkpoint.every != every:
        raise ValueError(
            f"checkpoint.every: {kind} clones the checkpoint of a trial's last report, so "
            f"checkpoint.every must equal train.eval_every ({every}), not "
            f"{sweep.checkpoint.every}"
        )


def hyperband_max_t(sweep) -> int | None:
    """HyperBand's largest budget: `scheduler.max_t`, or `train.max_steps` counted in steps
    (None where neither gives one)."""
    config = sweep.scheduler
    if config.max_t is not None:
        return config.max_t
    steps = sweep.train.max_steps
    return steps if config.time == "step" and isinstance(steps, int) else None


def check_hyperband(sweep) -> None:
    """Refuse a synchronous HyperBand without BOHB (use ASHA: it needs no pause), BOHB without
    it, a sweep that gives no largest budget, a cap on trials at once (paused ones count), and
    checkpoints that are not saved at each report (a paused trial continues from the
    checkpoint of its last report)."""
    config, searcher = sweep.scheduler, sweep.search.type
    if searcher == "bohb" and config.type != "hyperband":
        raise ValueError(
            "search.type: bohb learns from every trial's result at each budget of its own "
            "HyperBand; set scheduler: {type: hyperband} (its max_t and reduction_factor "
            f"set the budgets), not {config.type}"
        )
    if config.type != "hyperband":
        return
    if searcher != "bohb":
        raise ValueError(
            "scheduler.type: hyperband is synchronous HyperBand, offered as the scheduler of "
            f"search.type bohb; with search.type {searcher}, use asha with brackets > 1 "
            "(HyperBand's asynchronous form, which pauses no trial)"
        )
    max_t = hyperband_max_t(sweep)
    if max_t is None:
        raise ValueError(
            "scheduler.max_t: HyperBand needs its largest budget: set max_t (in "
            f"{config.time} units), or train.max_steps to one value with time: step"
        )
    first = first_report(sweep, config.time)
    if max_t < first:
        raise ValueError(
            f"scheduler.max_t: {max_t} ends trials before their first report "
            f"({first} {config.time}, from train.eval_every)"
        )
    for field, cap in (
        ("search.max_concurrent", sweep.search.max_concurrent),
        ("resources.max_concurrent", sweep.resources.max_concurrent),
    ):
        if cap is not None:
            raise ValueError(
                f"{field}: hyperband pauses trials, and Tune counts a paused trial against this "
                "cap until it ends, so each bracket would shrink to the cap; leave it out (the "
                "resources cap the trials running at once)"
            )
    every = sweep.train.eval_every
    if sweep.checkpoint.every != every:
        raise ValueError(
            "checkpoint.every: hyperband pauses a trial at a report and continues it later "
            "from the checkpoint of that report, so checkpoint.every must equal "
            f"train.eval_every ({every}), not {sweep.checkpoint.every}"
        )


def check_grace(sweep) -> None:
    """Refuse a `max_t` that ends trials before the default grace period (their first report)."""
    config = sweep.scheduler
    if getattr(config, "max_t", None) is None or getattr(config, "grace_period", 0) is not None:
        return  # no limit, or a grace period of its own (HyperBand has none: check_hyperband)
    grace = first_report(sweep, config.time)
    if config.max_t < grace:
        raise ValueError(
            f"scheduler.max_t: {config.max_t} ends trials before their first report "
            f"({grace} {config.time}, from train.eval_every); raise max_t or set grace_period"
        )
