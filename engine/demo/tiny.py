"""Randomly initialised tiny causal LMs for tests, one per supported architecture."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
)
from transformers.utils import logging as hf_logging

from engine.demo.paths import BASE_DIR

HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, MAX_POSITIONS = 32, 2, 4, 2, 64, 256
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_tiny_model(path: str | Path, arch: str = "llama", seed: int = 0) -> Path:
    """Write a random tiny ``arch`` model and the demo tokenizer to ``path``.

    ``arch`` is one of ``TINY_ARCHS``. Weights depend only on ``seed``; the global
    torch RNG is left as it was. Returns ``path`` as a ``Path``.
    """
    path = Path(path)
    config = tiny_config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for one tiny shard
    try:
        model.save_pretrained(path)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    for name in _TOKENIZER_FILES:
        if (BASE_DIR / name).exists():
            shutil.copy2(BASE_DIR / name, path / name)
    return path


def tiny_config(arch: str) -> PretrainedConfig:
    """The config ``save_tiny_model`` uses for ``arch``, sized to the demo tokenizer."""
    try:
        make = _CONFIGS[arch]
    except KeyError:
        raise ValueError(
            f"arch: unknown architecture {arch!r}; known: {', '.join(TINY_ARCHS)}"
        ) from None
    return make(_token_ids())


def _token_ids() -> dict[str, int]:
    # The base model's config already holds the tokenizer's size and special ids;
    # reading it avoids loading the tokenizer on every call.
    base = json.loads((BASE_DIR / "config.json").read_text(encoding="utf-8"))
    keys = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")
    return {key: base[key] for key in keys}


def _llama_like(config_cls: type[PretrainedConfig]) -> Callable[[dict], PretrainedConfig]:
    def make(ids: dict) -> PretrainedConfig:
        return config_cls(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS,
            intermediate_size=INTERMEDIATE,
            max_position_embeddings=MAX_POSITIONS,
            **ids,
        )

    return make


def _gpt2(ids: dict) -> PretrainedConfig:
    return GPT2Config(
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=INTERMEDIATE,
        n_positions=MAX_POSITIONS,
        **ids,
    )


# Each architecture keeps its own default for tied embeddings (GPT-2 ties them,
# the others do not), so tests see both layouts.
_CONFIGS: dict[str, Callable[[dict], PretrainedConfig]] = {
    "llama": _llama_like(LlamaConfig),
    "gpt2": _gpt2,
    "qwen2": _llama_like(Qwen2Config),
    "mistral": _llama_like(MistralConfig),
}
TINY_ARCHS: tuple[str, ...] = tuple(_CONFIGS)
