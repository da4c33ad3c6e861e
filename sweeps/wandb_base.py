"""What every section of a Weights & Biases sweep file shares: unknown keys are errors that list
the allowed ones, and numbers are JSON schema's (an int or a float, never a bool or text)."""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, PlainValidator, model_validator


def check_keys(data: dict, allowed: list[str], unsupported: dict[str, str]) -> None:
    """Refuse a key that is not in `allowed`, naming it and listing the allowed ones; a key W&B
    knows but raysoup does not take says why (`unsupported`)."""
    for key in data:
        if key in allowed:
            continue
        listed = f"allowed here: {', '.join(allowed)}"
        if key in unsupported:
            raise ValueError(f"`{key}`: {unsupported[key]}; {listed}")
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise ValueError(f"unknown key `{key}`; {hint}{listed}")


class WandbModel(BaseModel):
    """A section of a W&B sweep file: an unknown key is an error that lists the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    unsupported: ClassVar[dict[str, str]] = {}  # keys W&B accepts here that raysoup refuses

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = sorted(cls.model_fields, key=lambda k: k != "distribution")
            check_keys(data, allowed, cls.unsupported)
        return data


def _number(value: Any) -> int | float:
    # JSON schema's "number": an int or a float, never a bool; PyYAML reads `1e-3` as text.
    if isinstance(value, str):
        raise ValueError(f"{value!r} is text, not a number (YAML reads 1e-3 as text: write 1.0e-3)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _positive(value: int | float) -> int | float:
    if value <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return value


def _non_negative(value: int | float) -> int | float:
    if value < 0:
        raise ValueError(f"must be at least 0, got {value!r}")
    return value


Number = Annotated[Any, PlainValidator(_number)]
"""A number kept as written: an int stays an int (W&B returns ints when `q` is an int)."""
Integer = Annotated[Any, PlainValidator(_integer)]
Positive = Annotated[Any, PlainValidator(_number), AfterValidator(_positive)]
PositiveInteger = Annotated[Any, PlainValidator(_integer), AfterValidator(_positive)]
NonNegative = Annotated[Any, PlainValidator(_number), AfterValidator(_non_negative)]

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")  # schema.json `parameters.propertyNames`


def check_names(parameters: Any) -> Any:
    """Refuse an empty `parameters` and a name W&B's schema refuses."""
    if isinstance(parameters, dict):
        if not parameters:
            raise ValueError("give at least one parameter")
        for name in parameters:
            if not isinstance(name, str) or not NAME.match(name):
                raise ValueError(
                    f"parameter name {name!r}: W&B takes letters, digits, '_', '.' and '-', "
                    "starting with a letter or '_'"
                )
    return parameters
