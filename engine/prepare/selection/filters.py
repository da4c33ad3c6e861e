"""`filter`: drop rows by length, regular expressions and simple quality heuristics.

Each row is checked in a fixed order and counted under the first reason it fails.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from engine.prepare.selection.registry import StageInput, register


def repetition_ratio(text: str, n: int = 3) -> float:
    """Share of the text's word n-grams (white-space words) that repeat an earlier one."""
    tokens = text.split()
    grams = list(zip(*(tokens[i:] for i in range(n))))
    return 0.0 if not grams else 1 - len(set(grams)) / len(grams)


def symbol_ratio(text: str) -> float:
    """Share of non-space characters that are neither letters nor digits."""
    visible = [c for c in text if not c.isspace()]
    return 0.0 if not visible else sum(not c.isalnum() for c in visible) / len(visible)


def failed_check(text: str, config, include: list[re.Pattern], exclude: list[re.Pattern]) -> str:
    """The first check `text` fails, or '' when it passes all."""
    chars, tokens = len(text), len(text.split())
    checks = [
        ("too_short", config.min_chars is not None and chars < config.min_chars),
        ("too_long", config.max_chars is not None and chars > config.max_chars),
        ("too_few_tokens", config.min_tokens is not None and tokens < config.min_tokens),
        ("too_many_tokens", config.max_tokens is not None and tokens > config.max_tokens),
        ("no_include_match", bool(include) and not any(p.search(text) for p in include)),
        ("exclude_match", any(p.search(text) for p in exclude)),
        (
            "repetition",
            config.max_repetition_ratio is not None
            and repetition_ratio(text) > config.max_repetition_ratio,
        ),
        (
            "symbols",
            config.max_symbol_ratio is not None and symbol_ratio(text) > config.max_symbol_ratio,
        ),
    ]
    return next((reason for reason, failed in checks if failed), "")


def _check_batch(texts, keys, rows, *, config):
    include = [re.compile(p) for p in config.include]
    exclude = [re.compile(p) for p in config.exclude]
    reasons = np.array([failed_check(t, config, include, exclude) for t in texts], dtype=object)
    failed = reasons != ""
    return {"row": rows[failed], "reason": reasons[failed].astype(str)}


@register("filter")
def filter_rows(config, data: StageInput) -> dict[str, np.ndarray]:
    found = data.scan(functools.partial(_check_batch, config=config))
    return {
        str(reason): found["row"][found["reason"] == reason]
        for reason in np.unique(found["reason"])
    }
