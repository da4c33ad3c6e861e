"""Selection stages by name: each stage module registers its function on import."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# A scan runs a per-batch function over the stage's input and returns its arrays, each
# concatenated over batches. The function sees (texts, example keys, row ids).
BatchFn = Callable[[list[str], np.ndarray, np.ndarray], dict[str, np.ndarray]]


class Scan(Protocol):
    def __call__(self, fn: BatchFn) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class StageInput:
    """What a stage sees of its input: a scan over it, its row count, and a reader for side files
    (the target sample of importance resampling)."""

    scan: Scan
    rows: int
    fields: list[str]
    read_texts: Callable[[str, list[str]], list[str]]


# A stage takes its config and its input and returns the ids of the rows it removes, by reason.
StageFn = Callable[[object, StageInput], dict[str, np.ndarray]]

_STAGES: dict[str, StageFn] = {}


def register(name: str):
    """Register a stage function under `name` (the `type:` users write); names are unique."""

    def wrap(fn: StageFn) -> StageFn:
        if name in _STAGES:
            raise ValueError(f"selection stage {name!r} is registered twice")
        _STAGES[name] = fn
        return fn

    return wrap


def get_stage(name: str) -> StageFn:
    if name not in _STAGES:
        raise ValueError(f"unknown selection stage {name!r}; known: {', '.join(sorted(_STAGES))}")
    return _STAGES[name]


def known_stages() -> list[str]:
    return sorted(_STAGES)
