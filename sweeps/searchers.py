"""Searchers: how a sweep chooses its configurations, chosen by `search.type`.

`grid` and `random` draw every configuration before training (`sweeps.trials`); `optuna`,
`hyperopt` and `bohb` suggest each one from the scores of the configurations before it (bohb
from every result at each budget of its HyperBand), so the sampled spaces (`choice`, `uniform`,
`loguniform`, `randint`) are theirs to explore and `num_samples` is how many configurations they
suggest. Every configuration, drawn or suggested, is trained on every task, data size and seed
(docs/search.md).
"""

from __future__ import annotations

import importlib.util
from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field

from sweeps.base import Strict

NonNegInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
MAX_CONCURRENT_HELP = (
    "Trials running at once while the searcher waits for scores (null: as many as the "
    "resources allow); fewer at once lets later suggestions learn from more results."
)


class SearchConfig(Strict):
    package: ClassVar[str | None] = None  # the optional package it needs (`raysoup[search]`)

    def learns(self) -> bool:
        """Whether configurations are suggested from finished trials (not drawn up front)."""
        return self.package is not None


ORDER_HELP = (
    "The order the configurations start in: `given` (as drawn: the grid's values in the order "
    "the sweep lists them) or `shuffled` (drawn from `order_seed`; each configuration's tasks, "
    "data sizes and seeds stay together). An early-stopping scheduler judges a trial against "
    "those that reached its rung before it, so a sorted grid (the small learning rates first) "
    "gives it a biased first sample: shuffle with asha or median (docs/search.md)."
)


class _Drawn(SearchConfig):
    order: Literal["given", "shuffled"] = Field("given", description=ORDER_HELP)
    order_seed: NonNegInt = Field(0, description="Seed of the `shuffled` order.")


class Grid(_Drawn):
    """Every grid point, with the sampled spaces drawn `num_samples` times for each from
    `data.seed`, all before training (the default)."""

    type: Literal["grid"] = Field(..., description="`grid`.")


class Random(_Drawn):
    """As `grid`, drawn from a seed of its own: random search, whose seed can change without
    changing the data's."""

    type: Literal["random"] = Field(..., description="`random`.")
    seed: NonNegInt | None = Field(
        None, description="Seed of the draws; null: `data.seed` (as `grid`)."
    )


class _Learning(SearchConfig):
    seed: NonNegInt = Field(0, description="Seed of the searcher's own random draws.")
    max_concurrent: PositiveInt | None = Field(None, description=MAX_CONCURRENT_HELP)


class Optuna(_Learning):
    """Optuna's TPE sampler (Tune's `OptunaSearch`)."""

    type: Literal["optuna"] = Field(..., description="`optuna`.")
    package: ClassVar[str] = "optuna"
    startup_trials: PositiveInt = Field(
        10, description="Configurations drawn at random before TPE models the scores."
    )


class HyperOpt(_Learning):
    """HyperOpt's TPE (Tune's `HyperOptSearch`)."""

    type: Literal["hyperopt"] = Field(..., description="`hyperopt`.")
    package: ClassVar[str] = "hyperopt"
    startup_trials: PositiveInt = Field(
        20, description="Configurations drawn at random before TPE models the scores."
    )


class Bohb(_Learning):
    """BOHB (Tune's `TuneBOHB`, hpbandster): HyperBand's brackets (`scheduler: {type:
    hyperband}`), each new point drawn from a model of the results at the largest budget that
    has enough of them."""

    type: Literal["bohb"] = Field(..., description="`bohb`.")
    package: ClassVar[str] = "hpbandster"
    startup_trials: PositiveInt | None = Field(
        None,
        description="Results at a budget before BOHB models it (points before then are "
        "drawn at random); null: the number of searched fields plus one.",
    )


SEARCHERS = (Grid, Random, Optuna, HyperOpt, Bohb)
SEARCH_TYPES = tuple(s.model_fields["type"].annotation.__args__[0] for s in SEARCHERS)
Search = Annotated[Union[SEARCHERS], Field(discriminator="type")]  # noqa: UP007 (a tuple)


def check_search_type(value):
    """Name an unknown or missing `type` with the known ones (before pydantic's union error)."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind not in SEARCH_TYPES:
        raise ValueError(f"type: unknown search type {kind!r}; known: {_known()}")
    return value


def _known() -> str:
    return ", ".join(SEARCH_TYPES)


def check_searcher(sweep) -> None:
    """Refuse what a learning searcher cannot search: a grid space (it suggests every value
    itself), no sampled space at all, or its package missing. `sweep` is a `Sweep`."""
    config = sweep.search
    if not config.learns():
        return
    if sweep.branches and config.type == "bohb":
        raise ValueError(
            "branches: search.type bohb searches one space (Tune's BOHB has no conditional "
            "spaces); use optuna or hyperopt, which suggest a branch, then its values"
        )
    if not sweep.branches:  # a branched sweep's spaces are checked branch by branch (config.py)
        spaces = sweep.search_space()
        grids = [path for path, space in spaces.items() if space.key == "grid"]
        if grids:
            raise ValueError(
                f"search.type: {config.type} suggests every value itself, but {grids[0]} holds "
                "a grid; give it a `choice` of the same values (or use search.type grid)"
            )
        if not spaces:
            raise ValueError(
                f"search.type: {config.type} has nothing to search: no field holds a choice, "
                "uniform, loguniform or randint space"
            )
    if importlib.util.find_spec(config.package) is None:
        raise ValueError(
            f"search.type: {config.type} needs the package {config.package!r}, which is not "
            "installed: pip install 'raysoup[search]'"
        )
