"""`importance_resample`: DSIR (Xie et al., 2023). Hashed n-gram counts of a target sample and of
the raw pool give a log importance weight per document; Gumbel top-k on those weights samples
without replacement. The Gumbel noise is a fixed function of (example key, seed), so a smaller
selection from the same pool is always inside a larger one."""

from __future__ import annotations

import functools

import numpy as np

from engine.prepare.selection.features import gumbel_from_keys, hashed_ngrams, resolve_keep, top_k
from engine.prepare.selection.registry import StageInput, register


def bucket_counts(texts: list[str], ngrams: int, buckets: int) -> np.ndarray:
    """How often the 1- to `ngrams`-grams of all texts fall in each hash bucket."""
    hashes, _ = hashed_ngrams(texts, ngrams)
    return np.bincount((hashes % np.uint64(buckets)).astype(np.int64), minlength=buckets)


def log_ratio(target_counts: np.ndarray, pool_counts: np.ndarray, smoothing: float) -> np.ndarray:
    """log p_target(bucket) - log p_pool(bucket), both with `smoothing` added to every count, so
    a bucket that one side never shows does not give an infinite weight."""
    target = (target_counts + smoothing) / (target_counts.sum() + smoothing * len(target_counts))
    pool = (pool_counts + smoothing) / (pool_counts.sum() + smoothing * len(pool_counts))
    return np.log(target) - np.log(pool)


def log_weights(texts: list[str], ratio: np.ndarray, ngrams: int) -> np.ndarray:
    """Each text's log importance weight: the sum of `ratio` over its hashed n-grams."""
    hashes, doc = hashed_ngrams(texts, ngrams)
    contributions = ratio[(hashes % np.uint64(len(ratio))).astype(np.int64)]
    return np.bincount(doc, weights=contributions, minlength=len(texts))


def resample(
    weights: np.ndarray, keys: np.ndarray, rows: np.ndarray, k: int, seed: int
) -> np.ndarray:
    """Mask of the k rows drawn without replacement in proportion to exp(weights)."""
    return top_k(weights + gumbel_from_keys(keys, seed), rows, k)


def _count_batch(texts, keys, rows, *, ngrams: int, buckets: int):
    return {"counts": bucket_counts(texts, ngrams, buckets)[None, :]}


def _weigh_batch(texts, keys, rows, *, ratio: np.ndarray, ngrams: int):
    return {"weight": log_weights(texts, ratio, ngrams), "key": keys, "row": rows}


@register("importance_resample")
def importance_resample(config, data: StageInput) -> dict[str, np.ndarray]:
    k = resolve_keep(config.keep, data.rows)
    fields = [config.target_field] if config.target_field else data.fields
    target = bucket_counts(data.read_texts(config.target, fields), config.ngrams, config.buckets)
    pool = data.scan(functools.partial(_count_batch, ngrams=config.ngrams, buckets=config.buckets))[
        "counts"
    ].sum(axis=0)
    ratio = log_ratio(target, pool, config.smoothing)
    found = data.scan(functools.partial(_weigh_batch, ratio=ratio, ngrams=config.ngrams))
    kept = resample(found["weight"], found["key"], found["row"], k, config.seed)
    return {"not_selected": found["row"][~kept]}
