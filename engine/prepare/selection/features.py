"""Hashed text features shared by the selection stages: pure numpy, no Ray, no I/O.

Every hash here is a fixed function of the text (or of an example key and a seed), never of the
process: Ray workers in different processes must agree, so Python's salted `hash()` is not used.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

WORD = re.compile(r"\w+|[^\w\s]+")  # words and runs of punctuation, as NLTK's WordPunct
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that spreads every input bit."""
    z = np.asarray(values, dtype=np.uint64) + GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation runs."""
    return WORD.findall(text.lower())


def token_hashes(docs: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(one uint64 hash per token, the index of its document), all documents flattened.

    Each distinct token is hashed once per call (CRC-32 in C, then mixed to 64 bits).
    """
    flat = [token for doc in docs for token in doc]
    table = {token: zlib.crc32(token.encode()) for token in set(flat)}
    hashes = mix64(np.fromiter((table[t] for t in flat), dtype=np.uint64, count=len(flat)))
    doc = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    return hashes, doc


def ngram_hashes(hashes: np.ndarray, doc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every run of n consecutive tokens inside one document, with its document."""
    if n == 1 or len(hashes) < n:
        return (hashes, doc) if n == 1 else (hashes[:0], doc[:0])
    combined = hashes[: len(hashes) - n + 1].copy()
    for offset in range(1, n):
        combined = mix64(combined * np.uint64(31) + hashes[offset : len(hashes) - n + 1 + offset])
    same_doc = doc[: len(doc) - n + 1] == doc[n - 1 :]
    return combined[same_doc], doc[: len(doc) - n + 1][same_doc]


def hashed_ngrams(texts: list[str], ngrams: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of all 1- to `ngrams`-grams of each text, with the index of their text."""
    hashes, doc = token_hashes([words(t) for t in texts])
    parts = [ngram_hashes(hashes, doc, n) for n in range(1, ngrams + 1)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def uniform_from_keys(keys: np.ndarray, seed: int) -> np.ndarray:
    """A number in (0, 1) per example that depends only on its key and the seed."""
    salt = mix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    bits = mix64(np.asarray(keys).astype(np.uint64) ^ salt) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) / float(1 << 53)


def gumbel_from_keys(keys: np.ndarray, seed: int) -> np.ndarray:
    """Standard Gumbel noise per example, a fixed function of (key, seed): one draw for all k."""
    return -np.log(-np.log(uniform_from_keys(keys, seed)))


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k highest scores; ties go to the smaller id, so the order is total and
    the top k always lies inside the top k+1."""
    order = np.lexsort((ids, -scores))
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:k]] = True
    return mask


def resolve_keep(keep: int | float, rows: int) -> int:
    """A keep count, or a fraction of `rows` (at least one row); more than `rows` is an error, as
    keeping everything would silently skip the stage."""
    if isinstance(keep, float):
        return max(1, round(keep * rows))
    if keep > rows:
        raise ValueError(f"keep is {keep}, but only {rows} rows reach this stage")
    return keep
