"""`exact_dedup`: drop rows whose normalised text another row already has."""

from __future__ import annotations

import hashlib
import re

import numpy as np

from engine.prepare.selection.registry import StageInput, register

SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, runs of white space as one space, no leading or trailing space."""
    return SPACE.sub(" ", text.lower()).strip()


def text_hashes(texts: list[str]) -> np.ndarray:
    """A 63-bit hash of each normalised text."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(normalise(t).encode(), digest_size=8).digest(), "little")
            >> 1
            for t in texts
        ),
        dtype=np.int64,
        count=len(texts),
    )


def later_copies(groups: np.ndarray, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Row ids that are not the first of their group, in (key, row id) order.

    The survivor of a group is its smallest example key, which depends on the content alone,
    so the result does not depend on how the rows were split into batches.
    """
    order = np.lexsort((rows, keys, groups))
    sorted_groups = groups[order]
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = sorted_groups[1:] == sorted_groups[:-1]
    return rows[order][repeat]


def _hash_batch(texts: list[str], keys: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    return {"hash": text_hashes(texts), "key": keys, "row": rows}


@register("exact_dedup")
def exact_dedup(config, data: StageInput) -> dict[str, np.ndarray]:
    found = data.scan(_hash_batch)
    return {"duplicate": later_copies(found["hash"], found["key"], found["row"])}
