"""Tiny random models, built once per session, for the merging tests.

Each architecture gets a base model (with a tokenizer) and two "fine-tunes" that are
the base plus small noise, so task vectors are small relative to the weights, as in
real fine-tuning. Everything is 2 layers, hidden size 32, vocabulary 128.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def hash_cache(tmp_path_factory) -> Path:
    """Input digests are cached in a session folder, never in the user's cache."""
    folder = tmp_path_factory.mktemp("hash-cache")
    os.environ["RAYSOUP_CACHE_DIR"] = str(folder)
    return folder


VOCAB = 128
ARCHS = ("llama", "gpt2", "qwen2")


def tiny_config(arch: str):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return cls(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        **common,
    )


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB - 1)} | {"[UNK]": VOCAB - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)


def build_family(
    arch: str, root: Path, dtype: torch.dtype = torch.float32, seed: int = 0
) -> list[Path]:
    """[base, ft1, ft2]: the base and two noisy copies of it, each with a tokenizer."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch)).to(dtype)
    folders = []
    for i in range(3):
        folder = root / f"{arch}-{str(dtype).split('.')[-1]}-{i}"
        if i:
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(0.02 * torch.randn_like(param))
        model.save_pretrained(folder)
        save_tokenizer(folder)
        folders.append(folder)
    return folders


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def families(models_root) -> dict[str, list[Path]]:
    """arch -> [base, ft1, ft2], float32."""
    return {arch: build_family(arch, models_root) for arch in ARCHS}


@pytest.fixture(scope="session")
def llama(families) -> list[Path]:
    return families["llama"]


@pytest.fixture(scope="session")
def clones(families, models_root) -> dict[str, list[Path]]:
    """arch -> two byte-identical copies of ft1 under other names."""
    out = {}
    for arch, (_, ft1, _) in families.items():
        out[arch] = [models_root / f"{ft1.name}-clone{i}" for i in range(2)]
        for folder in out[arch]:
            shutil.copytree(ft1, folder)
    return out


@pytest.fixture(scope="session")
def half_families(models_root) -> dict[torch.dtype, list[Path]]:
    """Llama families stored in bfloat16 and float16."""
    return {
        dtype: build_family("llama", models_root, dtype)
        for dtype in (torch.bfloat16, torch.float16)
    }


@pytest.fixture(scope="session")
def lora_adapters(llama, models_root) -> list[Path]:
    """Two PEFT LoRA adapters on the llama base (ranks 4 and 2, random non-zero B)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    for i, (rank, alpha) in enumerate([(4, 8), (2, 4)]):
        torch.manual_seed(100 + i)
        base = AutoModelForCausalLM.from_pretrained(llama[0])
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=["q_proj", "v_proj", "down_proj"],
            lora_dropout=0.0,
        )
        peft_model = get_peft_model(base, config)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1)
        folder = models_root / f"lora-{i}"
        peft_model.save_pretrained(folder)
        folders.append(folder)
    return folders


def load_all(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder, in float32 (tests only: small models)."""
    from merging.io import ModelFiles

    files = ModelFiles(folder)
    return {name: files.load(name).float() for name in files.names()}


@pytest.fixture(scope="session")
def opposed(llama, models_root) -> list[Path]:
    """[base, a, b] on the llama base whose task vectors differ in sign and size: with
    d = a - base (small noise), b - base is -2 d at even flat positions and d / 2 at odd ones.
    TIES's sign election keeps only b's entry at even positions and both at odd ones."""
    from safetensors.torch import save_file

    base = load_all(llama[0])
    generator = torch.Generator().manual_seed(7)
    d = {k: 0.02 * torch.randn(v.shape, generator=generator) for k, v in base.items()}
    folders = []
    for name, delta in (("a", d), ("b", {k: opposed_delta(v) for k, v in d.items()})):
        folder = models_root / f"opposed-{name}"
        shutil.copytree(llama[0], folder)
        (folder / "model.safetensors").unlink()
        weights = {k: v + delta[k] for k, v in base.items()}
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        folders.append(folder)
    return [llama[0], *folders]


def even_positions(tensor: torch.Tensor) -> torch.Tensor:
    """True at even flat positions of `tensor`."""
    return (torch.arange(tensor.numel()) % 2 == 0).reshape(tensor.shape)


def opposed_delta(d: torch.Tensor) -> torch.Tensor:
    """-2 d at even flat positions, d / 2 at odd ones."""
    return torch.where(even_positions(d), -2 * d, d / 2)
