"""Search-space values that may stand at any numeric or categorical field of a sweep.

In YAML a space is a one-key mapping (`lr: {loguniform: [1e-5, 1e-3]}`); in Python the helpers
below return the same mapping, so both spellings validate through one path.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Generic, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, model_validator

T = TypeVar("T")

# Error locations carry union tags; they start with this mark so `errors.py` can drop them.
TAG_MARK = "~"


class Space(BaseModel):
    """Base of every search-space kind; `key` is the one YAML key that selects it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    key: ClassVar[str]

    def values(self) -> list[Any] | None:
        """The finite list of values, or None for a continuous distribution."""
        return None


class Grid(Space, Generic[T]):
    """Every value is tried: the sweep's size multiplies by its length."""

    key: ClassVar[str] = "grid"
    grid: list[T]

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.grid:
            raise ValueError("a grid needs at least one value")
        return self

    def values(self) -> list[Any]:
        return list(self.grid)


class Choice(Space, Generic[T]):
    """One value drawn at random per sample (`num_samples` draws)."""

    key: ClassVar[str] = "choice"
    choice: list[T]

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.choice:
            raise ValueError("a choice needs at least one value")
        return self

    def values(self) -> list[Any]:
        return list(self.choice)


class _Range(Space, Generic[T]):
    def bounds(self) -> tuple[Any, Any]:
        return getattr(self, self.key)

    @model_validator(mode="after")
    def _ordered(self):
        low, high = self.bounds()
        if not low < high:
            raise ValueError(f"{self.key} needs [low, high] with low < high, got [{low}, {high}]")
        return self


class Uniform(_Range[T], Generic[T]):
    """A float drawn uniformly from [low, high]."""

    key: ClassVar[str] = "uniform"
    uniform: tuple[T, T]


class LogUniform(_Range[T], Generic[T]):
    """A float drawn uniformly in log space from [low, high]; both bounds positive."""

    key: ClassVar[str] = "loguniform"
    loguniform: tuple[T, T]

    @model_validator(mode="after")
    def _positive(self):
        if self.bounds()[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        return self


class RandInt(_Range[T], Generic[T]):
    """An integer drawn uniformly from [low, high], both included."""

    key: ClassVar[str] = "randint"
    randint: tuple[int, int]


SPACES: dict[str, type[Space]] = {s.key: s for s in (Grid, Choice, Uniform, LogUniform, RandInt)}


def grid(values: list[Any]) -> dict:
    """Try every value (a grid axis)."""
    return {"grid": list(values)}


def choice(values: list[Any]) -> dict:
    """Draw one of the values per sample."""
    return {"choice": list(values)}


def uniform(low: float, high: float) -> dict:
    """Draw a float uniformly from [low, high]."""
    return {"uniform": [low, high]}


def loguniform(low: float, high: float) -> dict:
    """Draw a float log-uniformly from [low, high]."""
    return {"loguniform": [low, high]}


def randint(low: int, high: int) -> dict:
    """Draw an integer from [low, high], both included."""
    return {"randint": [low, high]}


def _kind(value: Any, allowed: tuple[str, ...]) -> str | None:
    if isinstance(value, Space):
        return TAG_MARK + value.key
    if isinstance(value, dict):
        key = next(iter(value)) if len(value) == 1 else None
        return TAG_MARK + key if key in allowed else None
    return TAG_MARK + "value"


KINDS_BY_TYPE = {
    "float": ("grid", "choice", "uniform", "loguniform"),
    "int": ("grid", "choice", "randint"),
    "categorical": ("grid", "choice"),
}


def searchable(tp: Any, kind: str = "float") -> Any:
    """The annotation for a field that takes a plain `tp` value or a search space over `tp`.

    `kind` ("float", "int" or "categorical") decides which spaces the field accepts.
    """
    kinds = KINDS_BY_TYPE[kind]
    members = [Annotated[tp, Tag(TAG_MARK + "value")]]
    members += [Annotated[SPACES[k][tp], Tag(TAG_MARK + k)] for k in kinds]
    message = "not a value or a known search space; search spaces here: " + ", ".join(kinds)
    return Annotated[
        Union[tuple(members)],  # noqa: UP007 (built from a list)
        Discriminator(
            lambda v: _kind(v, kinds),
            custom_error_type="search_space",
            custom_error_message=message,
        ),
    ]


def grid_size(space: Space) -> int:
    """How many trials a space multiplies the sweep by (1 for sampled spaces)."""
    return len(space.values()) if isinstance(space, Grid) else 1
