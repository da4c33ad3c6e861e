"""Data selection stages a sweep runs on its training data, in order, before tokenizing.

Each stage is chosen by `type:`. The text a stage looks at is the data's fields joined by a
newline: the text field, or the prompt and the completion.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, Field, StrictInt, field_validator, model_validator

from sweeps.base import DataFile, Strict

Ratio = Annotated[float, Field(gt=0, le=1)]
Count = Annotated[int, Field(gt=0)]


def _keep(value: int | float) -> int | float:
    if (isinstance(value, int) and value <= 0) or (isinstance(value, float) and not 0 < value <= 1):
        raise ValueError(f"give a row count (an integer > 0) or a fraction in (0, 1], not {value}")
    return value


Keep = Annotated[StrictInt | float, AfterValidator(_keep)]
KEEP_HELP = "Rows to keep: a count (5000) or a fraction of the rows that reach this stage (0.25)."


class StageConfig(Strict):
    pass


class ExactDedup(StageConfig):
    """Drop rows whose normalised text (lower case, white space collapsed) another row has."""

    type: Literal["exact_dedup"] = Field(..., description="`exact_dedup`.")


class NearDedup(StageConfig):
    """Drop near-duplicates: MinHash of word n-grams with LSH; of rows that share an LSH bucket,
    the one first in the data order stays."""

    type: Literal["near_dedup"] = Field(..., description="`near_dedup`.")
    threshold: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.8,
        description="Jaccard similarity of n-gram sets above which rows count as duplicates "
        "(sets the LSH bands unless `bands` and `rows` are given).",
    )
    ngram: Count = Field(
        5, description="Words per shingle; a text with fewer words uses its single words."
    )
    num_perm: Annotated[int, Field(ge=16, le=1024)] = Field(
        128, description="MinHash permutations: more is more exact and slower."
    )
    bands: Count | None = Field(
        None,
        description="LSH bands (give with `rows`; null: the "
        "split that best separates pairs below and above `threshold`).",
    )
    rows: Count | None = Field(None, description="MinHash values per LSH band (with `bands`).")
    seed: int = Field(0, description="Seed of the MinHash permutations.")

    @model_validator(mode="after")
    def _bands_fit(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both `bands` and `rows`, or neither")
        if self.bands and self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands x rows = {self.bands * self.rows} exceeds num_perm {self.num_perm}"
            )
        return self


class Filter(StageConfig):
    """Drop rows by length, regular expressions and quality heuristics. Tokens here are
    white-space separated words, not model tokens."""

    type: Literal["filter"] = Field(..., description="`filter`.")
    min_chars: Count | None = Field(None, description="Drop texts shorter than this.")
    max_chars: Count | None = Field(None, description="Drop texts longer than this.")
    min_tokens: Count | None = Field(None, description="Drop texts of fewer white-space words.")
    max_tokens: Count | None = Field(None, description="Drop texts of more white-space words.")
    include: list[str] = Field(
        [],
        description="Regular expressions; keep only texts that match "
        "at least one (empty: no such condition).",
    )
    exclude: list[str] = Field([], description="Regular expressions; drop texts that match any.")
    max_repetition_ratio: Ratio | None = Field(
        None, description="Drop texts whose share of repeated word 3-grams is above this."
    )
    max_symbol_ratio: Ratio | None = Field(
        None,
        description="Drop texts whose share of non-space characters that are neither "
        "letters nor digits is above this.",
    )

    @field_validator("include", "exclude")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{pattern!r} is not a regular expression: {err}") from None
        return patterns

    @model_validator(mode="after")
    def _some_condition(self):
        for low, high in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} ({lo}) is above {high} ({hi})")
        set_fields = self.model_fields_set - {"type"}
        if not set_fields:
            raise ValueError(
                "a filter needs at least one condition: min_chars, max_chars, "
                "min_tokens, max_tokens, include, exclude, max_repetition_ratio, "
                "max_symbol_ratio"
            )
        return self


class ImportanceResample(StageConfig):
    """DSIR importance resampling toward a target sample: hashed n-gram counts of the target
    and of the pool weight each row; Gumbel top-k keeps `keep` rows without replacement, from
    one fixed draw, so smaller keeps are inside larger ones."""

    type: Literal["importance_resample"] = Field(..., description="`importance_resample`.")
    target: DataFile = Field(
        ...,
        description="File of target examples (.jsonl, .json, .parquet or "
        ".csv). A relative path is taken from the sweep file's folder.",
    )
    target_field: str | None = Field(
        None, description="Field of the target file to read (null: the data's own fields)."
    )
    keep: Keep = Field(..., description=KEEP_HELP)
    ngrams: Annotated[int, Field(ge=1, le=4)] = Field(
        2, description="Longest word n-gram counted (2: words and word pairs)."
    )
    buckets: Annotated[int, Field(ge=16)] = Field(
        10_000, description="Hash buckets of the n-gram counts."
    )
    smoothing: Annotated[float, Field(gt=0)] = Field(
        0.001,
        description="Pseudo-count added to every bucket of both n-gram counts: smaller "
        "follows the target more closely (n-grams the target lacks weigh heavily against a "
        "row), larger is gentler.",
    )
    seed: int = Field(0, description="Seed of the Gumbel draw.")


class RandomSubset(StageConfig):
    """Keep a uniform random sample: the baseline to compare every other selection with."""

    type: Literal["random"] = Field(..., description="`random`.")
    keep: Keep = Field(..., description=KEEP_HELP)
    seed: int = Field(0, description="Seed of the draw; smaller keeps are inside larger ones.")


STAGES = (ExactDedup, NearDedup, Filter, ImportanceResample, RandomSubset)
STAGE_TYPES = tuple(s.model_fields["type"].annotation.__args__[0] for s in STAGES)
Stage = Annotated[Union[STAGES], Field(discriminator="type")]  # noqa: UP007 (a tuple)


def check_stage_types(stages):
    """Name an unknown or missing `type` with the known ones (before pydantic's union error)."""
    for index, stage in enumerate(stages if isinstance(stages, list) else []):
        kind = stage.get("type") if isinstance(stage, dict) else getattr(stage, "type", None)
        if kind not in STAGE_TYPES:
            raise ValueError(
                f"[{index}].type: unknown stage type {kind!r}; known: {', '.join(STAGE_TYPES)}"
            )
    return stages
