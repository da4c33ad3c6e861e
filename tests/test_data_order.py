"""The one shuffled order behind data-scale subsets (property tests, no Ray)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.prepare.keys import example_keys

texts = st.lists(st.text(min_size=1, max_size=30), min_size=2, max_size=60, unique=True)


def subset(all_texts: list[str], keys: np.ndarray, n: int) -> list[str]:
    return [all_texts[i] for i in np.argsort(keys, kind="stable")[:n]]


@settings(max_examples=60, deadline=None)
@given(texts, st.integers(0, 2**31), st.data())
def test_subsets_are_nested_for_every_size_and_split_into_blocks(items, seed, data):
    keys = example_keys(items, seed)
    small = data.draw(st.integers(1, len(items)))
    large = data.draw(st.integers(small, len(items)))
    assert set(subset(items, keys, small)) <= set(subset(items, keys, large))
    # Keys come from each example alone: computing them block by block, in any block layout
    # and any block order, gives the same order.
    cut = data.draw(st.integers(1, len(items) - 1))
    blocks = np.concatenate([example_keys(items[cut:], seed), example_keys(items[:cut], seed)])
    reordered = items[cut:] + items[:cut]
    assert subset(reordered, blocks, large) == subset(items, keys, large)


@settings(max_examples=30, deadline=None)
@given(texts, st.integers(0, 2**31))
def test_the_order_depends_on_the_seed_and_keys_are_non_negative(items, seed):
    keys = example_keys(items, seed)
    assert (keys >= 0).all()
    assert len(set(keys.tolist())) == len(items)  # 63-bit keys: no collisions at this size
    if len(items) >= 8:
        other = example_keys(items, seed + 1)
        assert np.argsort(keys).tolist() != np.argsort(other).tolist()


def test_the_torch_free_encoder_matches_the_transformers_tokenizer():
    import json

    import pyarrow as pa

    from engine.core.encode import fast_path_agrees
    from engine.demo import BASE_DIR
    from engine.prepare.stage import tokenize_batch
    from sweeps import parse_sweep
    from tests.conftest import DEMO_DATA

    assert fast_path_agrees(str(BASE_DIR))
    rows = [
        json.loads(line)
        for line in (DEMO_DATA / "reverse" / "train.jsonl").read_text().splitlines()[:200]
    ]
    table = pa.Table.from_pylist(
        [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    )
    data = parse_sweep(
        {
            "name": "e",
            "model": {"preset": "demo"},
            "data": {"train": "x.jsonl", "format": "prompt_completion"},
        }
    ).data
    fast = tokenize_batch(table, data, str(BASE_DIR), False, fast=True)
    slow = tokenize_batch(table, data, str(BASE_DIR), False, fast=False)
    assert fast.equals(slow)
    assert fast["labels"][0].as_py()[0] == -100  # the prompt is masked


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcde"), max_size=8), max_size=6), st.integers(1, 6))
def test_a_remembering_encoder_gives_what_its_encoder_gives(batches, limit):
    """Whatever it kept or had to forget, each batch's ids are its encoder's, and a caller
    that changes a returned list changes nothing kept."""
    from engine.core.encode import TextEncoder, remembering

    encoded = []

    def encode(texts: list[str]) -> list[list[int]]:
        encoded.extend(texts)
        return [[ord(c) for c in text] for text in texts]

    enc = remembering(TextEncoder(encode, [1], [2]), limit=limit)
    for batch in batches:
        texts = ["".join(b) for b in batch]
        got = enc.encode(texts)
        assert got == [[ord(c) for c in text] for text in texts]
        for ids in got:
            ids.append(-1)
    again = [["".join(b) for b in batch] for batch in batches]
    if all(len(set(t)) <= limit for t in again) and len({t for b in again for t in b}) <= limit:
        encoded.clear()
        for texts in again:
            assert enc.encode(texts) == [[ord(c) for c in text] for text in texts]
        assert encoded == []  # every text was kept: none encoded twice
