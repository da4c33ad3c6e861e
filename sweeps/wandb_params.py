"""The parameter distributions of a Weights & Biases sweep file, with W&B's own meanings.

Each definition follows `HyperParameter.ppf` in wandb/sweeps `src/sweeps/params.py` (what W&B's
random search draws from) and the parameter schemas of `src/sweeps/config/schema.json` (keys
and defaults). A distribution draws from a `numpy.random.Generator`, says what W&B's grid
search enumerates of it (`grid_search.py`), and what raysoup search space it converts to.
"""

from __future__ import annotations

import difflib
import math
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    Discriminator,
    Tag,
    field_validator,
    model_validator,
)

from sweeps.space import TAG_MARK
from sweeps.wandb_base import Integer, NonNegative, Number, Positive, WandbModel, check_names

DISTRIBUTIONS: dict[str, type[Distribution]] = {}


def _register(cls: type[Distribution]) -> type[Distribution]:
    name = cls.model_fields["distribution"].default
    if name in DISTRIBUTIONS:
        raise ValueError(f"distribution {name!r} is registered twice")
    DISTRIBUTIONS[name] = cls
    return cls


class Distribution(WandbModel):
    """One W&B parameter distribution (the `distribution` key selects it)."""

    raysoup: ClassVar[str | None] = None  # the raysoup space it converts to; None: none

    def draw(self, rng: np.random.Generator) -> Any:
        """One value, drawn as W&B's random search draws it."""
        raise NotImplementedError

    def grid_values(self) -> list[Any] | None:
        """The values W&B's grid search tries, or None where grid search refuses the kind."""
        return None

    def space(self) -> Any:
        """The raysoup value or search space that draws as this does (random and Optuna)."""
        converts = ", ".join(n for n, d in DISTRIBUTIONS.items() if d.raysoup)
        raise ValueError(
            f"distribution {self.distribution} has no raysoup search space; the ones that "
            f"convert: {converts}"
        )


class _Bounded(Distribution):
    min: Number
    max: Number

    @model_validator(mode="after")
    def _ordered(self):
        if not self.min < self.max:  # W&B's `validate_min_max` (config/schema.py)
            raise ValueError(f"min {self.min} is not less than max {self.max}")
        return self


class _PositiveBounds(_Bounded):
    min: Positive  # the `_values` forms take logs of both bounds


class _Quantised(WandbModel):
    q: Positive = 1.0  # schema default 1.0, a float: without `q` the values stay floats

    def quantise(self, x: float) -> int | float:
        """`round(x / q) * q` as W&B's ppf rounds (numpy's round: halves go to even), an int
        when `q` is one."""
        value = np.round(x / self.q) * self.q
        return int(value) if isinstance(self.q, int) else float(value)


@_register
class Constant(Distribution):
    """`value`, always (schema `param_single_value`)."""

    distribution: Literal["constant"] = "constant"
    value: Any
    raysoup: ClassVar[str] = "the value itself"

    def draw(self, rng: np.random.Generator) -> Any:
        return self.value

    def grid_values(self) -> list[Any]:
        return [self.value]

    def space(self) -> Any:
        return self.value


@_register
class Categorical(Distribution):
    """One of `values`, uniformly, or with `probabilities` (which W&B requires to sum to 1,
    `validate_categorical_prob`); W&B's grid refuses probabilities."""

    distribution: Literal["categorical"] = "categorical"
    values: list[Any]
    probabilities: list[NonNegative] | None = None
    raysoup: ClassVar[str] = "choice (grid under method grid)"

    @model_validator(mode="after")
    def _consistent(self):
        if not self.values:
            raise ValueError("values: give at least one value")
        probabilities = self.probabilities
        if probabilities is not None and len(probabilities) != len(self.values):
            raise ValueError(
                f"probabilities: {len(probabilities)} given for {len(self.values)} values"
            )
        if probabilities is not None and not np.isclose(sum(probabilities), 1.0):
            raise ValueError(f"probabilities: they sum to {sum(probabilities)}, not 1")
        return self

    def draw(self, rng: np.random.Generator) -> Any:
        weights = self.probabilities
        p = None if weights is None else np.divide(weights, sum(weights))  # exactly 1 for numpy
        return self.values[int(rng.choice(len(self.values), p=p))]

    def grid_values(self) -> list[Any] | None:
        return None if self.probabilities is not None else list(self.values)

    def space(self) -> dict:
        if self.probabilities is not None:
            raise ValueError(
                "probabilities: raysoup's choice draws its values uniformly and has no "
                "weighted form; remove probabilities or list a value more than once"
            )
        return {"choice": list(self.values)}


@_register
class CategoricalWithProbabilities(Categorical):
    """W&B's explicit name for a categorical with `probabilities` (the same draw)."""

    distribution: Literal["categorical_w_probabilities"] = "categorical_w_probabilities"
    probabilities: list[NonNegative]
    raysoup: ClassVar[None] = None


@_register
class IntUniform(_Bounded):
    """An integer from min to max, both included (`stats.randint(min, max + 1)`)."""

    distribution: Literal["int_uniform"] = "int_uniform"
    min: Integer
    max: Integer
    raysoup: ClassVar[str] = "randint (grid of every integer under method grid)"

    def draw(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.min, self.max, endpoint=True))

    def grid_values(self) -> list[int]:
        return list(range(self.min, self.max + 1))

    def space(self) -> dict:
        return {"randint": [self.min, self.max]}


@_register
class Uniform(_Bounded):
    """A float uniform on [min, max]."""

    distribution: Literal["uniform"] = "uniform"
    raysoup: ClassVar[str] = "uniform"

    def draw(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.min, self.max))

    def space(self) -> dict:
        return {"uniform": [self.min, self.max]}


@_register
class QUniform(_Bounded, _Quantised):
    """A uniform draw on [min, max] rounded to a multiple of q. W&B's grid tries
    `np.arange(min, max, q)`: max itself is left out of the grid."""

    distribution: Literal["q_uniform"] = "q_uniform"

    def draw(self, rng: np.random.Generator) -> int | float:
        return self.quantise(rng.uniform(self.min, self.max))

    def grid_values(self) -> list[Any]:
        return np.arange(self.min, self.max, self.q).tolist()


@_register
class LogUniform(_Bounded):
    """exp(uniform(min, max)): min and max are natural logs of the bounds (the "v1" form;
    W&B's validator now refuses it as deprecated in favour of `log_uniform_values`, but its
    sampler still draws it)."""

    distribution: Literal["log_uniform"] = "log_uniform"
    raysoup: ClassVar[str] = "loguniform [exp(min), exp(max)]"

    def draw(self, rng: np.random.Generator) -> float:
        return math.exp(rng.uniform(self.min, self.max))

    def space(self) -> dict:
        return {"loguniform": [math.exp(self.min), math.exp(self.max)]}


@_register
class LogUniformValues(_PositiveBounds):
    """exp(uniform(log min, log max)): log-uniform between the values min and max."""

    distribution: Literal["log_uniform_values"] = "log_uniform_values"
    raysoup: ClassVar[str] = "loguniform [min, max]"

    def draw(self, rng: np.random.Generator) -> float:
        return math.exp(rng.uniform(math.log(self.min), math.log(self.max)))

    def space(self) -> dict:
        return {"loguniform": [self.min, self.max]}


@_register
class QLogUniform(_Bounded, _Quantised):
    """exp(uniform(min, max)) rounded to a multiple of q (bounds are logs, as log_uniform)."""

    distribution: Literal["q_log_uniform"] = "q_log_uniform"

    def draw(self, rng: np.random.Generator) -> int | float:
        return self.quantise(math.exp(rng.uniform(self.min, self.max)))


@_register
class QLogUniformValues(_PositiveBounds, _Quantised):
    """exp(uniform(log min, log max)) rounded to a multiple of q."""

    distribution: Literal["q_log_uniform_values"] = "q_log_uniform_values"

    def draw(self, rng: np.random.Generator) -> int | float:
        return self.quantise(math.exp(rng.uniform(math.log(self.min), math.log(self.max))))


@_register
class InvLogUniform(_Bounded):
    """exp(-uniform(min, max)) (`inv_log_uniform_v1_ppf`): 1/x is log-uniform on
    [exp(min), exp(max)], so x is log-uniform on [exp(-max), exp(-min)]."""

    distribution: Literal["inv_log_uniform"] = "inv_log_uniform"
    raysoup: ClassVar[str] = "loguniform [exp(-max), exp(-min)]"

    def draw(self, rng: np.random.Generator) -> float:
        return math.exp(-rng.uniform(self.min, self.max))

    def space(self) -> dict:
        return {"loguniform": [math.exp(-self.max), math.exp(-self.min)]}


@_register
class InvLogUniformValues(_PositiveBounds):
    """exp(-uniform(-log max, -log min)): W&B's ppf makes this log-uniform on [min, max],
    the same draw as log_uniform_values (the inverse of a log-uniform is log-uniform)."""

    distribution: Literal["inv_log_uniform_values"] = "inv_log_uniform_values"
    raysoup: ClassVar[str] = "loguniform [min, max]"

    def draw(self, rng: np.random.Generator) -> float:
        return math.exp(-rng.uniform(-math.log(self.max), -math.log(self.min)))

    def space(self) -> dict:
        return {"loguniform": [self.min, self.max]}


class _Gaussian(Distribution):
    mu: Number = 0.0
    sigma: NonNegative = 1.0


@_register
class Normal(_Gaussian):
    """normal(mu, sigma); mu defaults to 0, sigma to 1."""

    distribution: Literal["normal"] = "normal"

    def draw(self, rng: np.random.Generator) -> float:
        return float(rng.normal(self.mu, self.sigma))


@_register
class QNormal(_Gaussian, _Quantised):
    """normal(mu, sigma) rounded to a multiple of q."""

    distribution: Literal["q_normal"] = "q_normal"

    def draw(self, rng: np.random.Generator) -> int | float:
        return self.quantise(rng.normal(self.mu, self.sigma))


@_register
class LogNormal(_Gaussian):
    """exp(normal(mu, sigma)) (`stats.lognorm(s=sigma, scale=exp(mu))`)."""

    distribution: Literal["log_normal"] = "log_normal"

    def draw(self, rng: np.random.Generator) -> float:
        return float(rng.lognormal(self.mu, self.sigma))


@_register
class QLogNormal(_Gaussian, _Quantised):
    """exp(normal(mu, sigma)) rounded to a multiple of q."""

    distribution: Literal["q_log_normal"] = "q_log_normal"

    def draw(self, rng: np.random.Generator) -> int | float:
        return self.quantise(rng.lognormal(self.mu, self.sigma))


class _BetaShape(Distribution):
    # The schema allows 0, where scipy's beta is undefined (W&B would draw NaN): refused.
    a: Positive = 1.0
    b: Positive = 1.0


@_register
class Beta(_BetaShape):
    """beta(a, b) on [0, 1]; a and b default to 1."""

    distribution: Literal["beta"] = "beta"

    def draw(self, rng: np.random.Generator) -> float:
        return float(rng.beta(self.a, self.b))


@_register
class QBeta(_BetaShape, _Quantised):
    """beta(a, b) rounded to a multiple of q."""

    distribution: Literal["q_beta"] = "q_beta"

    def draw(self, rng: np.random.Generator) -> int | float:
        return self.quantise(rng.beta(self.a, self.b))


class Nested(WandbModel):
    """A parameter holding parameters of its own: its draws are a nested mapping
    (schema `param_dict`)."""

    parameters: dict[str, Parameter]

    @field_validator("parameters", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return check_names(value)


def infer_distribution(value: Any) -> Any:
    """`value` with its `distribution` filled in as W&B's schema infers it: `value` is a
    constant, `values` a categorical, integer `min` and `max` an int_uniform and other
    numbers a uniform; an unknown name lists the known ones."""
    if isinstance(value, BaseModel):
        return value
    if not isinstance(value, dict):
        raise ValueError(
            f"a parameter is a mapping (for a fixed value write {{value: {value!r}}}), "
            f"got {type(value).__name__}"
        )
    if "distribution" in value:
        name = value["distribution"]
        if name not in DISTRIBUTIONS:
            close = difflib.get_close_matches(str(name), DISTRIBUTIONS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"distribution: unknown {name!r}; {hint}known: {', '.join(DISTRIBUTIONS)}"
            )
        return value
    return {**value, "distribution": _inferred(value)} if "parameters" not in value else value


def _inferred(value: dict) -> str:
    if "value" in value:
        return "constant"
    if "values" in value:
        return "categorical"
    if "min" in value and "max" in value:
        ints = all(
            isinstance(value[k], int) and not isinstance(value[k], bool) for k in ("min", "max")
        )
        return "int_uniform" if ints else "uniform"
    raise ValueError(
        f"cannot tell the distribution of keys {', '.join(map(str, value)) or '(none)'}: give "
        "`value`, `values`, `min` and `max`, nested `parameters`, or a `distribution`"
    )


def _tag(value: Any) -> str:
    if isinstance(value, Nested) or (isinstance(value, dict) and "distribution" not in value):
        return TAG_MARK + "parameters"
    name = value["distribution"] if isinstance(value, dict) else value.distribution
    return TAG_MARK + name


Parameter = Annotated[
    Union[  # noqa: UP007 (built from the registry)
        tuple(Annotated[cls, Tag(TAG_MARK + name)] for name, cls in DISTRIBUTIONS.items())
        + (Annotated[Nested, Tag(TAG_MARK + "parameters")],)
    ],
    Discriminator(_tag),
    BeforeValidator(infer_distribution),
]
"""One entry of a W&B file's `parameters`: a distribution, or nested parameters."""

Nested.model_rebuild()
