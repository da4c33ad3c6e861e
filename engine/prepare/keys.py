"""The one shuffled order of a sweep's examples: a keyed hash of each example's content.

The order does not depend on how Ray splits files into blocks: a data-scale subset of n examples
is the n smallest keys, so a smaller subset is always inside a larger one. The key's low digits
(`bucket`) pick held-out rows.
"""

from __future__ import annotations

import hashlib

import numpy as np

KEY_BUCKETS = 10_000


def example_keys(texts: list[str], seed: int) -> np.ndarray:
    """A stable 63-bit key per example from its content and the seed: the one shuffled order."""
    salt = seed.to_bytes(8, "little", signed=True)
    keys = [
        int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8, key=salt).digest(), "little") >> 1
        for t in texts
    ]
    return np.asarray(keys, dtype=np.int64)
