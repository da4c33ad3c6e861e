"""Checks of the committed demo assets and the demo helpers (no rebuild: too slow)."""

from __future__ import annotations

import collections
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.demo import BASE_DIR, DATA_DIR, TASKS, make_task
from engine.demo.pool import PLANTED, plant_noise
from engine.demo.tasks import preference_pairs
from engine.demo.tiny import TINY_ARCHS, save_tiny_model
from engine.prepare.selection.features import words
from engine.prepare.selection.pipeline import select_locally
from sweeps import load_sweep
from tests.conftest import REPO

FIELDS = {"prompt", "completion", "choices", "answer"}
DEMO_SWEEP = REPO / "sweeps" / "examples" / "demo.yaml"
# Which stage of the demo sweep removes which kind of planted row.
REMOVED_BY = {"exact_dedup": "exact", "filter": "junk", "near_dedup": "near"}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(BASE_DIR, local_files_only=True)


def _read_jsonl(path):
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _check_example(example):
    assert set(example) == FIELDS
    assert example["completion"].startswith(" ")
    assert len(set(example["choices"])) == len(example["choices"]) == 4
    assert example["choices"][example["answer"]] == example["completion"]


def test_base_model_loads_and_runs(tokenizer):
    model = AutoModelForCausalLM.from_pretrained(BASE_DIR, local_files_only=True)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    ids = tokenizer(["12+35=", "reverse abc:"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (2, ids["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_base_folder_is_small_and_complete():
    names = {p.name for p in BASE_DIR.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "README.md",
    } <= names
    assert sum(p.stat().st_size for p in BASE_DIR.iterdir()) < 10 * 2**20


@pytest.mark.parametrize("task", TASKS)
def test_tokenizer_round_trips_task_text(tokenizer, task):
    for example in make_task(task, 20, seed=1):
        text = example["prompt"] + example["completion"]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids


def test_tokenizer_special_tokens(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<s>",
        "</s>",
        "<pad>",
    )
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3


@pytest.mark.parametrize("task", TASKS)
def test_bundled_data(task):
    splits = [
        _read_jsonl(DATA_DIR / task / f"{split}.jsonl") for split in ("train", "eval", "test")
    ]
    assert [len(rows) for rows in splits] == [2000, 100, 100]
    prompts = [{e["prompt"] for e in rows} for rows in splits]
    for example in sum(splits, []):
        _check_example(example)
    assert len(set().union(*prompts)) == 2200


@pytest.mark.parametrize("task", TASKS)
def test_bundled_preference_pairs_are_the_splits_right_and_wrong_answers(task):
    for split in ("train", "eval", "test"):
        examples = _read_jsonl(DATA_DIR / task / f"{split}.jsonl")
        pairs = _read_jsonl(DATA_DIR / task / f"pairs_{split}.jsonl")
        assert pairs == preference_pairs(examples)
        for example, pair in zip(examples, pairs):
            assert pair["chosen"] == example["completion"] != pair["rejected"]
            assert pair["rejected"] in example["choices"]


def _same_words(example):
    """An example as its words: the same for a copy, a re-spaced copy and the original."""
    return tuple(words(example["prompt"])), example["completion"]


@pytest.mark.parametrize("task", TASKS)
def test_pool_is_train_with_planted_noise(task):
    pool = _read_jsonl(DATA_DIR / task / "pool.jsonl")
    train = _read_jsonl(DATA_DIR / task / "train.jsonl")
    assert pool == plant_noise(train, seed=0)
    assert [row for row in pool if "planted" not in row] == train
    assert collections.Counter(row.get("planted") for row in pool if "planted" in row) == PLANTED
    held_out = [_read_jsonl(DATA_DIR / task / f"{split}.jsonl") for split in ("eval", "test")]
    assert not {_same_words(e) for e in pool} & {_same_words(e) for e in sum(held_out, [])}


@pytest.mark.parametrize("task", TASKS)
def test_demo_selection_removes_exactly_the_planted_rows(task):
    sweep = load_sweep(DEMO_SWEEP)
    data = sweep.task_data(task)
    assert data.train == str(DATA_DIR / task / "pool.jsonl")
    pool = _read_jsonl(DATA_DIR / task / "pool.jsonl")
    texts = ["\x1f".join(row[f] for f in data.fields()) for row in pool]
    kept, report = select_locally(texts, data.select, data)
    removed = {stage["type"]: stage["rows_in"] - stage["rows_out"] for stage in report}
    assert removed == {stage: PLANTED[kind] for stage, kind in REMOVED_BY.items()}
    # Of each group of copies one row stays (the first in the data order, maybe a copy), and
    # no junk and no clean example is lost.
    train = _read_jsonl(DATA_DIR / task / "train.jsonl")
    assert sorted(_same_words(pool[i]) for i in kept) == sorted(map(_same_words, train))
    assert all(pool[i].get("planted") != "junk" for i in kept)


@pytest.mark.parametrize("task", TASKS)
def test_make_task_is_deterministic(task):
    examples = make_task(task, 50, seed=3)
    assert examples == make_task(task, 50, seed=3)
    assert examples[:10] == make_task(task, 10, seed=3)
    assert examples != make_task(task, 50, seed=4)
    assert len({e["prompt"] for e in examples}) == 50
    for example in examples:
        _check_example(example)


def test_make_task_rejects_unknown_name():
    with pytest.raises(ValueError, match="known: add"):
        make_task("multiply", 5, seed=0)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_save_tiny_model(tmp_path, arch):
    path = save_tiny_model(tmp_path / arch, arch=arch, seed=0)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    ids = tokenizer(["12+35= 47"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_save_tiny_model_seed_sets_weights(tmp_path):
    same = [
        save_tiny_model(tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    weights = [(p / "model.safetensors").read_bytes() for p in same]
    assert weights[0] == weights[1] != weights[2]


def test_save_tiny_model_rejects_unknown_arch(tmp_path):
    with pytest.raises(ValueError, match="known: llama"):
        save_tiny_model(tmp_path, arch="bert")
