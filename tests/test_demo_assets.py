"""Checks of the committed demo assets and the demo helpers (no rebuild: too slow)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.demo import BASE_DIR, DATA_DIR, TASKS, make_task
from engine.demo.tiny import TINY_ARCHS, save_tiny_model

FIELDS = {"prompt", "completion", "choices", "answer"}


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
