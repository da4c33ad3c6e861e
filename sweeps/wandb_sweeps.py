"""Weights & Biases sweep files: read and validate one, draw from it as W&B would, and convert
it to a raysoup sweep when its parameters name raysoup fields (`train.lr`).

The keys and defaults are those of wandb/sweeps `src/sweeps/config/schema.json`; the
distributions are in `sweeps.wandb_params`. docs/wandb-sweep-files.md has the whole mapping.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError, field_validator, model_validator

from sweeps.errors import SweepError, format_validation_error
from sweeps.wandb_base import Number, PositiveInteger, WandbModel, check_names
from sweeps.wandb_params import Distribution, Nested, Parameter

KeyPath = tuple[str, ...]  # a parameter's keys from the top of `parameters`, as written
GRID_REFUSAL = (
    "distribution {} cannot be enumerated; W&B's grid search takes only constant, categorical "
    "(without probabilities), int_uniform and q_uniform"
)
MODES = {"minimize": "min", "maximize": "max"}
SCRIPT = (
    "names a script of yours; conversion is for files whose parameters name raysoup sweep "
    "fields (train.lr, ...): remove it"
)
NOT_CONVERTED = {
    "program": SCRIPT,
    "command": SCRIPT,
    "metric.target": "not supported by conversion: raysoup has no field that ends a sweep when "
    "a run reaches a target (every configuration runs); remove it",
    "early_terminate.strict": "false is not supported by conversion: ASHA compares a trial's "
    "metric at the rung, as W&B's strict (the default) does; remove it",
}


def is_wandb_sweep(data: Any) -> bool:
    """Whether a parsed file is a W&B sweep file: it has top-level `method` and `parameters`,
    which a raysoup sweep never has."""
    return isinstance(data, dict) and "method" in data and "parameters" in data


class Metric(WandbModel):
    """The metric W&B's bayes search and hyperband stopping read."""

    unsupported = {
        "impute": "W&B's bayes search detail, which raysoup's searchers do not have",
        "impute_while_running": "W&B's bayes search detail, which raysoup's searchers do not have",
    }
    name: str
    goal: Literal["minimize", "maximize"] = "minimize"
    target: Number | None = None


class Hyperband(WandbModel):
    """W&B's hyperband stopping (`hyperband_stopping.py`): a running run is stopped at a band
    when its metric is outside the best 1/eta of the runs that reached the band. A band is a
    count of the run's logged values of the metric: `min_iter` times powers of eta, or
    `max_iter` divided by eta, eta**2, ... eta**s (each rounded down, none below 1)."""

    type: Literal["hyperband"]
    min_iter: PositiveInteger | None = None
    max_iter: PositiveInteger | None = None
    s: PositiveInteger | None = None
    eta: Number = 3
    strict: bool = True

    @model_validator(mode="after")
    def _one_form(self):
        if self.eta <= 1:
            raise ValueError(f"eta must be above 1, got {self.eta}")
        if self.min_iter is not None and self.max_iter is not None:
            raise ValueError("give min_iter, or max_iter and s, not both (W&B ignores min_iter)")
        if self.min_iter is None and (self.max_iter is None or self.s is None):
            raise ValueError("give min_iter, or max_iter and s")
        if self.first_band() is None:
            raise ValueError(f"max_iter {self.max_iter} / eta {self.eta} is below 1: no band")
        return self

    def first_band(self) -> int | None:
        """The smallest band, as W&B computes its bands (None: max_iter / eta is below 1, and
        W&B has no band)."""
        if self.min_iter is not None:
            return self.min_iter
        divided = (self.max_iter / self.eta**k for k in range(1, self.s + 1))
        bands = [int(band) for band in itertools.takewhile(lambda b: b >= 1, divided)]
        return min(bands, default=None)


class WandbSweep(WandbModel):
    """A W&B sweep file (its `method`, `parameters`, and what they run against)."""

    unsupported = {
        key: "a W&B feature raysoup does not have"
        for key in ("apiVersion", "kind", "controller", "job", "image_uri", "metrics", "scheduler")
    }
    method: Literal["grid", "random", "bayes"]
    parameters: dict[str, Parameter]
    metric: Metric | None = None
    program: str | None = None
    command: list[Any] | None = None
    run_cap: PositiveInteger | None = None
    early_terminate: Hyperband | None = None
    name: str | None = None
    description: str | None = None
    project: str | None = None
    entity: str | None = None

    @field_validator("parameters", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return check_names(value)

    @model_validator(mode="after")
    def _metric_given(self):
        if self.metric is None and self.method == "bayes":
            raise ValueError("metric: method bayes optimises it; give metric {name, goal}")
        if self.metric is None and self.early_terminate is not None:
            raise ValueError("metric: early_terminate stops runs by it; give metric {name, goal}")
        return self


def parse_wandb_sweep(data: Any, source: str = "W&B sweep") -> WandbSweep:
    """Validate a parsed W&B sweep file; a `SweepError` names each problem's key path."""
    if isinstance(data, WandbSweep):
        return data
    if not isinstance(data, dict):
        raise SweepError(f"{source}: expected a mapping of sweep keys, got {type(data).__name__}")
    try:
        parsed = WandbSweep.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(err, source) from None
    if parsed.method == "grid":  # W&B's grid search refuses what it cannot enumerate
        found = leaves(parsed.parameters)
        _raise(source, [_not_enumerable(path, p) for path, p in found if p.grid_values() is None])
    return parsed


def _raise(source: str, problems: list[str], doing: str = "") -> None:
    """One `SweepError` with a line per problem, as `format_validation_error` writes them."""
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise SweepError(f"{source}: {len(problems)} problem(s){doing}\n{lines}")


def leaves(
    parameters: dict[str, Any], prefix: KeyPath = ()
) -> Iterator[tuple[KeyPath, Distribution]]:
    """Every distribution under `parameters`, with its path through nested `parameters`."""
    for key, parameter in parameters.items():
        if isinstance(parameter, Nested):
            yield from leaves(parameter.parameters, (*prefix, key))
        else:
            yield (*prefix, key), parameter


def location(path: KeyPath) -> str:
    """Where a parameter stands in the file: `parameters.train.parameters.lr`."""
    return "parameters." + ".parameters.".join(path)


def sample(sweep_file: WandbSweep | dict, rng: np.random.Generator) -> dict[str, Any]:
    """One configuration drawn as W&B's random search draws it: nested parameters give
    nested mappings, dotted names stay one key (`{"train.lr": 0.001}`)."""
    parsed = parse_wandb_sweep(sweep_file)
    return _tree({path: p.draw(rng) for path, p in leaves(parsed.parameters)})


def grid(sweep_file: WandbSweep | dict) -> list[dict[str, Any]]:
    """Every configuration of W&B's grid search, in its order (names sorted at each level,
    the last one changing fastest); a parameter it cannot enumerate is an error."""
    parsed = parse_wandb_sweep(sweep_file)
    found = list(leaves(_sorted(parsed.parameters)))
    for path, parameter in found:
        if parameter.grid_values() is None:
            raise SweepError(_not_enumerable(path, parameter))
    axes = [parameter.grid_values() for _, parameter in found]
    paths = [path for path, _ in found]
    return [_tree(dict(zip(paths, point))) for point in itertools.product(*axes)]


def field_paths(sweep_file: WandbSweep | dict) -> dict[str, tuple[KeyPath, Distribution]]:
    """Each parameter by the raysoup field it names, dotted names and nested parameters alike
    (`train.lr`), with where it stands in the file; two naming one field are an error."""
    fields: dict[str, tuple[KeyPath, Distribution]] = {}
    for path, parameter in leaves(parse_wandb_sweep(sweep_file).parameters):
        field = ".".join(path)
        for other, (other_path, _) in fields.items():
            if field == other or field.startswith(other + ".") or other.startswith(field + "."):
                raise SweepError(
                    f"{location(path)}: names the field {field}, which "
                    f"{location(other_path)} also sets"
                )
        fields[field] = (path, parameter)
    return fields


def _not_enumerable(path: KeyPath, parameter: Distribution) -> str:
    return f"{location(path)}: " + GRID_REFUSAL.format(parameter.distribution)


def _sorted(parameters: dict[str, Any]) -> dict[str, Any]:
    # W&B's `HyperParameterSet.from_config` walks each level's names in sorted order.
    return {
        key: Nested(parameters=_sorted(p.parameters)) if isinstance(p, Nested) else p
        for key, p in sorted(parameters.items())
    }


def _tree(values: dict[KeyPath, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for (*parents, leaf), value in values.items():
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def to_raysoup(
    sweep_file: WandbSweep | dict, base: dict | None = None, source: str = "W&B sweep"
) -> dict[str, Any]:
    """The raysoup sweep mapping of a W&B file whose parameters name raysoup fields, written
    over `base` (a raysoup sweep mapping, not changed). Validate it with `parse_sweep`.

    Under method grid every parameter becomes a `grid` of what W&B's grid tries; under random
    and bayes a constant is its value, categorical a `choice`, int_uniform a `randint`,
    uniform a `uniform` and the log-uniform kinds a `loguniform`, and other distributions are
    errors. `method` sets `search`: grid, random (`num_samples` = run_cap) or, for bayes,
    Optuna's TPE (W&B's bayes is a Gaussian-process searcher; raysoup has none) with
    `num_samples` = run_cap. `metric` sets `metric` and `mode`; hyperband `early_terminate`
    sets an ASHA `scheduler` (see `_scheduler`).
    """
    parsed = parse_wandb_sweep(sweep_file, source)
    out = copy.deepcopy(base) if base else {}
    problems = _refused(parsed)
    for field, (path, parameter) in field_paths(parsed).items():
        try:
            _write(out, field, _space(parameter, parsed.method))
        except ValueError as err:
            problems.append(f"{location(path)}: {err}")
    try:
        out.update(_search(parsed, out.get("search")))
    except ValueError as err:
        problems.append(str(err))
    if parsed.metric is not None:
        out.update(metric=parsed.metric.name, mode=MODES[parsed.metric.goal])
    if parsed.early_terminate is not None:
        out["scheduler"] = _scheduler(parsed.early_terminate)
    _raise(source, problems, " converting to raysoup")
    return out


def _refused(parsed: WandbSweep) -> list[str]:
    metric, stopping = parsed.metric, parsed.early_terminate
    given = {
        "program": parsed.program is not None,
        "command": parsed.command is not None,
        "metric.target": metric is not None and metric.target is not None,
        "early_terminate.strict": stopping is not None and not stopping.strict,
    }
    return [f"{key}: {NOT_CONVERTED[key]}" for key, found in given.items() if found]


def _space(parameter: Distribution, method: str) -> Any:
    if method != "grid" or parameter.distribution == "constant":
        return parameter.space()
    values = parameter.grid_values()
    if values is None:
        raise ValueError(GRID_REFUSAL.format(parameter.distribution))
    return {"grid": values}


def _write(out: dict, field: str, value: Any) -> None:
    *parents, leaf = field.split(".")
    node = out
    for depth, key in enumerate(parents):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            held = ".".join(parents[: depth + 1])
            raise ValueError(f"the base's {held} is a {type(node).__name__}, not a section")
    node[leaf] = value


def _search(parsed: WandbSweep, base_search: Any) -> dict[str, Any]:
    kind = {"grid": "grid", "random": "random", "bayes": "optuna"}[parsed.method]
    same = isinstance(base_search, dict) and base_search.get("type") == kind
    fields = {"search": base_search if same else {"type": kind}}
    if parsed.method == "grid":
        points = math.prod(len(p.grid_values() or [None]) for _, p in leaves(parsed.parameters))
        if parsed.run_cap is not None and parsed.run_cap < points:
            raise ValueError(
                f"run_cap: {parsed.run_cap} is fewer than the {points} grid points, and "
                "raysoup's grid runs every point; remove run_cap or use method random"
            )
        return fields
    if parsed.run_cap is None:
        raise ValueError(
            f"run_cap: method {parsed.method} draws until stopped in W&B; raysoup draws "
            "num_samples configurations, taken from run_cap: give run_cap"
        )
    return {**fields, "num_samples": parsed.run_cap}


def _scheduler(hyperband: Hyperband) -> dict[str, Any]:
    """Hyperband stopping as raysoup's ASHA, with rungs at grace_period * eta**k.

    W&B counts a band in logged values of the metric (the `wandb.log` calls that carry it);
    raysoup's trials report every `train.eval_every` optimizer steps. The numbers are taken
    as optimizer steps (`time: step`), which matches a script that logged the metric every
    step: grace_period is W&B's first band (min_iter, or the smallest max_iter / eta**k for
    k up to s, rounded down, that is at least 1), reduction_factor is eta, and max_t is
    max_iter. Differences stay: ASHA ends every trial at max_t, where W&B's runs go on past
    max_iter; and ASHA judges a trial once, as it reaches a rung, where W&B's controller
    judges a running run again at each pass against its latest band's threshold.
    """
    scheduler = {"type": "asha", "time": "step", "grace_period": hyperband.first_band()}
    scheduler["reduction_factor"] = hyperband.eta
    if hyperband.max_iter is not None:
        scheduler["max_t"] = hyperband.max_iter
    return scheduler
