"""The pure math of the selection stages (no Ray, no files): hashed n-grams, keyed noise and
top-k, filter checks at their boundaries, DSIR's weights, normalised text hashes, MinHash
signatures and the LSH shape."""

from __future__ import annotations

import numpy as np
import pytest

from engine.prepare.keys import example_keys
from engine.prepare.selection import dsir, exact_dedup, features, filters, near_dedup
from sweeps import parse_sweep


def stage(**fields):
    sweep = parse_sweep(
        {"name": "s", "model": {"preset": "demo"}, "data": {"train": "x.jsonl", "select": [fields]}}
    )
    return sweep.data.select[0]


# --- features ----------------------------------------------------------------------------------


def test_words_are_lower_cased_words_and_punctuation_runs():
    assert features.words("Hello, World!! x_1") == ["hello", ",", "world", "!!", "x_1"]


def test_ngram_hashes_are_the_runs_of_n_tokens_inside_each_document():
    docs = [["a", "b", "c", "d"], ["a", "b"], ["c"], ["b", "c", "d"]]
    hashes, doc = features.token_hashes(docs)
    assert len(hashes) == 10 and doc.tolist() == [0, 0, 0, 0, 1, 1, 2, 3, 3, 3]
    assert hashes.dtype == np.uint64 and hashes[0] == hashes[4] and hashes[0] != hashes[1]
    for n, owners in ((1, doc.tolist()), (2, [0, 0, 0, 1, 3, 3]), (3, [0, 0, 3])):
        grams, owner = features.ngram_hashes(hashes, doc, n)
        assert owner.tolist() == owners and len(grams) == len(owners)
    bigrams, _ = features.ngram_hashes(hashes, doc, 2)
    # "a b" twice, "b c" twice, "c d" twice; never "d a" across documents
    assert bigrams[0] == bigrams[3] and bigrams[1] == bigrams[4] and bigrams[2] == bigrams[5]
    assert len(set(bigrams.tolist())) == 3
    trigrams, _ = features.ngram_hashes(hashes, doc, 3)
    assert trigrams[1] == trigrams[2] and trigrams[0] != trigrams[1]  # "b c d"; "a b c"
    # Every token counts, in order: "a b c" differs from "a x c", "c b a" and "a b d".
    for other in (["a", "x", "c"], ["c", "b", "a"], ["a", "b", "d"]):
        h, d = features.token_hashes([["a", "b", "c"], other])
        grams, _ = features.ngram_hashes(h, d, 3)
        assert grams[0] != grams[1], other
    h, d = features.token_hashes([["a", "b"]])
    assert len(features.ngram_hashes(h, d, 2)[0]) == 1  # exactly n tokens: one n-gram
    assert len(features.ngram_hashes(h, d, 3)[0]) == 0
    assert len(features.ngram_hashes(h, d, 3)[1]) == 0


def test_hashed_ngrams_count_every_one_to_n_gram():
    grams, doc = features.hashed_ngrams(["a b c", "A B"], 2)
    assert doc.tolist() == [0, 0, 0, 1, 1, 0, 0, 1]
    assert grams[0] == grams[3]  # "a" and "A"


def test_keyed_noise_is_a_fixed_function_of_key_and_seed():
    keys = example_keys([f"row {i}" for i in range(20000)], 0)
    u = features.uniform_from_keys(keys, 7)
    assert u.dtype == np.float64 and (u > 0).all() and (u < 1).all()
    assert abs(u.mean() - 0.5) < 0.01 and len(np.unique(u)) == len(u)
    assert np.array_equal(u, features.uniform_from_keys(keys, 7))
    assert not np.array_equal(u, features.uniform_from_keys(keys, 8))
    # The keyed uniforms of seed s are spread over (0, 1): every tenth holds a tenth of them.
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 1800
    g = features.gumbel_from_keys(keys, 7)
    assert np.allclose(g, -np.log(-np.log(u)))
    assert abs(g.mean() - np.euler_gamma) < 0.03  # the standard Gumbel's mean


def test_uniforms_are_the_top_53_bits_of_a_mixed_key_centred_in_their_cell():
    keys = np.array([0, 1, 2**62], dtype=np.int64)
    bits = features.mix64(keys.astype(np.uint64) ^ features.mix64(np.array([3], np.uint64)))
    expected = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    assert np.array_equal(features.uniform_from_keys(keys, 3), expected)
    assert features.uniform_from_keys(keys, -1).shape == (3,)  # any integer seed


def test_mix64_is_a_bijection_that_spreads_every_bit():
    values = np.arange(1 << 16, dtype=np.uint64)
    mixed = features.mix64(values)
    assert mixed.dtype == np.uint64 and len(np.unique(mixed)) == len(values)
    assert np.array_equal(features.mix64(values.tolist()), mixed)
    flips = features.mix64(values ^ np.uint64(1)) ^ mixed  # one input bit changed
    changed = np.unpackbits(flips.view(np.uint8)).reshape(len(values), 64).mean(axis=0)
    assert changed.min() > 0.4 and changed.max() < 0.6


def test_top_k_takes_the_highest_scores_and_breaks_ties_by_id():
    scores = np.array([0.5, 2.0, 0.5, 1.0, 0.5])
    ids = np.array([9, 1, 3, 4, 2])
    assert np.flatnonzero(features.top_k(scores, ids, 3)).tolist() == [1, 3, 4]
    assert np.flatnonzero(features.top_k(scores, ids, 4)).tolist() == [1, 2, 3, 4]


def test_resolve_keep_takes_counts_or_fractions():
    assert features.resolve_keep(0.25, 10) == 2 and features.resolve_keep(0.35, 10) == 4
    assert features.resolve_keep(0.01, 10) == 1 and features.resolve_keep(10, 10) == 10
    with pytest.raises(ValueError, match="^keep is 11, but only 10 rows reach this stage$"):
        features.resolve_keep(11, 10)


# --- filters -----------------------------------------------------------------------------------


def test_repetition_and_symbol_ratios():
    assert filters.repetition_ratio("a b c a b c") == pytest.approx(1 - 3 / 4)
    assert filters.repetition_ratio("a b c a b c", n=2) == pytest.approx(1 - 3 / 5)
    assert filters.repetition_ratio("a b") == 0.0 and filters.repetition_ratio("") == 0.0
    assert filters.symbol_ratio("ab #$ 12") == pytest.approx(2 / 6)
    assert filters.symbol_ratio("   ") == 0.0 and filters.symbol_ratio("!!") == 1.0


@pytest.mark.parametrize(
    "config, text, reason",
    [
        ({"min_chars": 5}, "abcd", "too_short"),
        ({"min_chars": 5}, "abcde", ""),
        ({"max_chars": 5}, "abcde", ""),
        ({"max_chars": 5}, "abcdef", "too_long"),
        ({"min_tokens": 3}, "a b", "too_few_tokens"),
        ({"min_tokens": 3}, "a b c", ""),
        ({"max_tokens": 3}, "a b c", ""),
        ({"max_tokens": 3}, "a b c d", "too_many_tokens"),
        ({"include": ["^x", "y$"]}, "a y", ""),
        ({"include": ["^x", "y$"]}, "a b", "no_include_match"),
        ({"exclude": ["bad"]}, "a bad b", "exclude_match"),
        ({"max_repetition_ratio": 0.25}, "a b c a b c", ""),  # exactly 0.25
        ({"max_repetition_ratio": 0.2}, "a b c a b c", "repetition"),
        ({"max_symbol_ratio": 0.5}, "ab!!", ""),  # exactly 0.5
        ({"max_symbol_ratio": 0.4}, "ab!!", "symbols"),
        ({"min_chars": 50, "exclude": ["a"]}, "a", "too_short"),  # the first reason counts
    ],
)
def test_each_check_refuses_only_beyond_its_bound(config, text, reason):
    import re

    config = stage(type="filter", **config)
    include = [re.compile(p) for p in config.include]
    exclude = [re.compile(p) for p in config.exclude]
    assert filters.failed_check(text, config, include, exclude) == reason
    found = filters._check_batch([text, "zzzzzzzzzzzzz"], None, np.array([5, 6]), config=config)
    assert found["row"].tolist() == ([5] if reason else []) + (
        [6] if filters.failed_check("zzzzzzzzzzzzz", config, include, exclude) else []
    )
    assert found["reason"].tolist()[:1] == ([reason] if reason else found["reason"].tolist()[:1])


# --- importance resampling (DSIR) --------------------------------------------------------------


def test_log_ratio_is_the_smoothed_log_probability_ratio():
    target, pool = np.array([3, 0, 1]), np.array([1, 2, 1])
    ratio = dsir.log_ratio(target, pool, 0.5)
    expected = np.log((target + 0.5) / (4 + 1.5)) - np.log((pool + 0.5) / (4 + 1.5))
    assert np.allclose(ratio, expected)
    assert np.isfinite(dsir.log_ratio(np.array([2, 0]), np.array([0, 2]), 1.0)).all()


def test_log_weights_sum_the_ratio_over_each_texts_ngrams():
    ratio = np.linspace(-1, 1, 16)
    texts = ["a b c", "c b", ""]  # an empty text last still gets its weight
    weights = dsir.log_weights(texts, ratio, 2)
    grams, doc = features.hashed_ngrams(texts, 2)
    buckets = (grams % np.uint64(16)).astype(np.int64)
    assert len(weights) == 3 and weights[2] == 0.0
    for i in range(3):
        assert weights[i] == pytest.approx(ratio[buckets[doc == i]].sum())
    counts = dsir.bucket_counts(texts, 2, 16)
    assert counts.sum() == len(grams) and len(counts) == 16


def test_resampling_favours_high_weights_with_keyed_noise():
    n = 2000
    keys, rows = example_keys([str(i) for i in range(n)], 0), np.arange(n)
    weights = np.where(rows < 100, 3.0, 0.0)  # e^3: twenty times as likely
    kept = dsir.resample(weights, keys, rows, 100, seed=1)
    assert kept.sum() == 100 and kept[:100].sum() > 6 * 100 * 100 / n  # 6 times chance
    noise = features.gumbel_from_keys(keys, 1)
    assert np.array_equal(kept, features.top_k(weights + noise, rows, 100))


# --- exact and near duplicates -----------------------------------------------------------------


def test_exact_hashes_are_of_the_normalised_text_and_non_negative():
    assert exact_dedup.normalise("  Hello\n\tWORLD  ") == "hello world"
    hashes = exact_dedup.text_hashes(["Hello  world", "hello world", "hello there", ""])
    assert hashes.dtype == np.int64 and (hashes >= 0).all()
    assert hashes[0] == hashes[1] and len(set(hashes.tolist())) == 3
    digest = __import__("hashlib").blake2b(b"hello world", digest_size=8).digest()
    assert hashes[1] == int.from_bytes(digest, "little") >> 1


def test_later_copies_keep_the_smallest_key_of_each_group():
    groups = np.array([7, 7, 3, 7, 3, 5])
    keys = np.array([30, 10, 5, 10, 1, 2])
    rows = np.array([100, 101, 102, 103, 104, 105])
    assert sorted(exact_dedup.later_copies(groups, keys, rows).tolist()) == [100, 102, 103]


def jaccard(a: str, b: str, n: int) -> float:
    def shingles(text):
        tokens = features.words(text)
        return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}

    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def test_signatures_estimate_jaccard_and_do_not_depend_on_the_batch():
    base = " ".join(f"w{i}" for i in range(60))
    near = base.replace("w30", "zz").replace("w31", "yy")
    other = " ".join(f"v{i}" for i in range(60))
    sig = near_dedup.signatures([base, near, other], ngram=3, num_perm=256)
    assert sig.shape == (3, 256) and sig.dtype == np.uint32
    agree = float((sig[0] == sig[1]).mean())
    assert agree == pytest.approx(jaccard(base, near, 3), abs=0.1)
    assert (sig[0] == sig[2]).mean() < 0.05
    for texts in ([other, near, base], [base], [near, base]):
        again = near_dedup.signatures(texts, ngram=3, num_perm=256)
        assert np.array_equal(again[texts.index(base)], sig[0])
    assert not np.array_equal(near_dedup.signatures([base], 3, 256, seed=1)[0], sig[0])
    assert (near_dedup.signatures([""], 3, 8) == near_dedup.EMPTY).all()


def test_a_text_shorter_than_the_shingle_is_its_words_and_one_of_exactly_n_is_one_shingle():
    short = near_dedup.signatures(["b a", "a b"], ngram=3, num_perm=128)
    assert np.array_equal(short[0], short[1])  # both are the words {a, b}
    exact = near_dedup.signatures(["a b c", "c b a"], ngram=3, num_perm=128)
    assert (exact[0] == exact[1]).mean() < 0.05  # two different 3-grams, no shared words


def test_band_keys_are_equal_exactly_when_a_band_is():
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 4], [2, 1, 3, 4]], dtype=np.uint32)
    keys = near_dedup.band_keys(sig, bands=2, rows=2)
    assert keys.shape == (3, 2)
    assert keys[0, 0] == keys[1, 0] and keys[0, 1] != keys[1, 1]
    assert keys[2, 0] != keys[0, 0] and keys[2, 1] == keys[0, 1]
    assert keys[0, 0] != keys[0, 1]  # the same values in different bands never collide
    same = near_dedup.band_keys(np.array([[5, 5, 5, 5]], dtype=np.uint32), 2, 2)
    assert same[0, 0] != same[0, 1]


def test_near_copies_drop_rows_sharing_any_band_with_an_earlier_row():
    bands = np.array([[1, 2], [3, 2], [3, 4], [5, 6]], dtype=np.uint64)
    keys, rows = np.array([1, 2, 3, 4]), np.array([10, 11, 12, 13])
    assert near_dedup.near_copies(bands, keys, rows).tolist() == [11, 12]
    empty = near_dedup.near_copies(np.zeros((0, 0), dtype=np.uint64), keys[:0], rows[:0])
    assert empty.tolist() == []


@pytest.mark.parametrize("threshold, num_perm", [(0.8, 128), (0.5, 64), (0.9, 256)])
def test_the_lsh_shape_separates_similarities_around_the_threshold(threshold, num_perm):
    bands, rows = near_dedup.lsh_shape(threshold, num_perm)
    assert bands * rows <= num_perm
    p = lambda s: 1 - (1 - s**rows) ** bands  # noqa: E731
    assert p(min(1.0, threshold + 0.15)) > 0.9 and p(threshold - 0.2) < 0.2
    # No other shape of the same budget separates better (the least error area).
    s = np.linspace(0, 1, 1001)

    def error(b, r):
        q = 1 - (1 - s**r) ** b
        return np.trapezoid(np.where(s < threshold, q, 1 - q), s)

    best = min(error(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1))
    assert error(bands, rows) == best
