"""What every part of a sweep definition shares: strict models and data-file paths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class Strict(BaseModel):
    """A config section: unknown keys, infinities and NaN are errors; defaults are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


def _known_suffix(value: str | None) -> str | None:
    if value is not None and not value.endswith(DATA_SUFFIXES):
        raise ValueError(
            f"'{value}' is not a known data file; allowed suffixes: " + ", ".join(DATA_SUFFIXES)
        )
    return value


DataFile = Annotated[str, AfterValidator(_known_suffix)]
"""A path to a data file with a known suffix (.jsonl, .json, .parquet, .csv)."""


def absolute(path: str | None, base: Path) -> str | None:
    """`path` made absolute against `base` (remote URLs and absolute paths unchanged)."""
    if path is None or "://" in path or Path(path).is_absolute():
        return path
    return str((base / path).resolve())
