"""`near_dedup`: MinHash signatures of word n-gram shingles, LSH bands, and one survivor per band
bucket. A row is dropped when a row with a smaller example key shares one of its band buckets."""

from __future__ import annotations

import functools

import numpy as np

from engine.prepare.selection.exact_dedup import later_copies
from engine.prepare.selection.features import mix64, ngram_hashes, token_hashes, words
from engine.prepare.selection.registry import StageInput, register

CHUNK = 1 << 15  # shingles hashed at once: num_perm x CHUNK x 8 bytes of scratch memory
EMPTY = np.uint32(0xFFFFFFFF)


def lsh_shape(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) whose candidate curve 1 - (1 - s^r)^b best separates Jaccard
    similarities below `threshold` from those above: the least false-positive plus false-negative
    area, weighted equally."""
    s = np.linspace(0, 1, 1001)
    best, shape = np.inf, (1, num_perm)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            p = 1 - (1 - s**rows) ** bands
            error = np.trapezoid(np.where(s < threshold, p, 1 - p), s)
            if error < best:
                best, shape = error, (bands, rows)
    return shape


@functools.lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Odd multipliers and offsets of `num_perm` multiply-shift hash functions."""
    base = np.arange(2 * num_perm, dtype=np.uint64) + np.uint64(seed * 2 * num_perm)
    params = mix64(base)
    return params[:num_perm] | np.uint64(1), params[num_perm:]


def signatures(texts: list[str], ngram: int, num_perm: int, seed: int = 0) -> np.ndarray:
    """MinHash signature (num_perm uint32 values) of each text's set of word n-grams. A text of
    fewer than `ngram` words uses its single words; an empty text gets all-max values."""
    hashes, doc = token_hashes([words(t) for t in texts])
    shingles, owner = ngram_hashes(hashes, doc, ngram)
    short = (np.bincount(doc, minlength=len(texts)) < ngram)[doc]
    shingles, owner = np.concatenate([shingles, hashes[short]]), np.concatenate([owner, doc[short]])
    order = np.argsort(owner, kind="stable")
    return _min_hashes(shingles[order], owner[order], len(texts), *permutations(num_perm, seed))


def _min_hashes(shingles, owner, n_docs, mult, add):
    out = np.full((n_docs, len(mult)), EMPTY, dtype=np.uint32)
    for start in range(0, len(shingles), CHUNK):
        part, docs = shingles[start : start + CHUNK], owner[start : start + CHUNK]
        hashed = ((part[:, None] * mult[None, :] + add[None, :]) >> np.uint64(32)).astype(np.uint32)
        firsts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
        minima = np.minimum.reduceat(hashed, firsts, axis=0)
        np.minimum.at(out, docs[firsts], minima)
    return out


def band_keys(signature: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (text, band): equal keys mean equal band values."""
    sig = signature[:, : bands * rows].astype(np.uint64).reshape(len(signature), bands, rows)
    keys = np.broadcast_to(mix64(np.arange(bands, dtype=np.uint64)), sig.shape[:2]).copy()
    for r in range(rows):
        keys = mix64(keys * np.uint64(31) + sig[:, :, r])
    return keys


def near_copies(bands: np.ndarray, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Row ids that share a band bucket with a row that comes before them in (key, row) order."""
    dropped = [later_copies(bands[:, b].view(np.int64), keys, rows) for b in range(bands.shape[1])]
    return np.unique(np.concatenate(dropped)) if dropped else rows[:0]


def _band_batch(texts, keys, rows, *, ngram: int, num_perm: int, seed: int, shape: tuple[int, int]):
    sig = signatures(texts, ngram, num_perm, seed)
    return {"bands": band_keys(sig, *shape), "key": keys, "row": rows}


@register("near_dedup")
def near_dedup(config, data: StageInput) -> dict[str, np.ndarray]:
    shape = (
        (config.bands, config.rows)
        if config.bands
        else lsh_shape(config.threshold, config.num_perm)
    )
    found = data.scan(
        functools.partial(
            _band_batch, ngram=config.ngram, num_perm=config.num_perm, seed=config.seed, shape=shape
        )
    )
    return {"near_duplicate": near_copies(found["bands"], found["key"], found["row"])}
