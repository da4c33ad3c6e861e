"""Finding, loading and saving the models that trials fine-tune."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.demo import BASE_DIR
from engine.demo.tiny import save_tiny_model
from merging.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

if TYPE_CHECKING:  # an evaluation actor imports this module; the sweep models are not needed
    from sweeps import Sweep
    from sweeps.config import FinetuneConfig, QloraConfig

TRAINER_STATE = "trainer_state.pt"
TRIAL_INFO = "trial.json"


def base_model_path(sweep: Sweep, model_dir: Path) -> str:
    """Where the base model lives: a preset's folder, a built random model, or the user's path."""
    if sweep.model.preset == "demo":
        return str(BASE_DIR)
    if sweep.model.preset == "tiny-random":
        if not (model_dir / "config.json").is_file():
            save_tiny_model(model_dir, arch="llama", seed=0)
        return str(model_dir)
    return sweep.model.path


def load_tokenizer(path: str, trust_remote_code: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_for_training(
    path: str,
    finetune: FinetuneConfig,
    device: torch.device,
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
):
    """The base model in float32 on `device`, wrapped in LoRA adapters for `lora` and `qlora`
    (whose base is loaded quantised to 4 bits). Weights load from safetensors only: a pickle is
    never unpickled."""
    quantized = finetune.method == "qlora"
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.float32,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        attn_implementation=attn_implementation,
        **(_quantized(finetune.qlora, device) if quantized else {}),
    )
    if quantized:
        import peft

        if device.type == "cpu":
            _no_cpu_repacking(model)
        # norms in float32, input gradients on (the adapters' only path through frozen
        # 4-bit layers), and activation checkpointing when asked for
        model = peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        model.to(device)
        if gradient_checkpointing:
            model.config.use_cache = False  # a cache is of no use in training, and conflicts
            model.activation_checkpointing_enable({"use_reentrant": False})
    if finetune.method in ("lora", "qlora"):
        import peft

        lora = finetune.lora
        config = peft.LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = peft.get_peft_model(model, config)
    return model


def _no_cpu_repacking(model) -> None:
    """Keep bitsandbytes' 4-bit layers in one layout on CPU. In eval mode they would repack
    their weights in place for an AVX512-BF16 kernel, which fails on matrices narrower than a
    quantisation block and leaves a layout the training path does not read back; evaluating
    through the same dequantising path as training also keeps the trial's metrics consistent."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _quantized(qlora: QloraConfig, device: torch.device) -> dict:
    """`from_pretrained`'s arguments for a base quantised by bitsandbytes, on `device`."""
    from transformers import BitsAndBytesConfig

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=qlora.quant_type,
        bnb_4bit_use_double_quant=qlora.double_quant,
        bnb_4bit_compute_dtype=dtypes[qlora.compute_dtype],
    )
    return {"quantization_config": config, "device_map": {"": str(device)}}


def save_checkpoint(model, tokenizer, folder: Path, optimizer_state: dict, info: dict) -> None:
    """A Hugging Face folder (the adapter only, for LoRA) plus what resuming needs.

    Weights are safetensors; the optimizer state is a plain tensor dict that loads with
    `torch.load(weights_only=True)`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    torch.save(optimizer_state, folder / TRAINER_STATE)
    (folder / TRIAL_INFO).write_text(json.dumps(info, indent=2))


def load_checkpoint_weights(model, folder: Path) -> None:
    """Load a checkpoint saved by `save_checkpoint` into `model` (in place)."""
    from safetensors.torch import load_file

    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter))
        return
    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    # Not strict: tied weights are saved once. Unexpected names mean a foreign checkpoint.
    unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"{folder}: checkpoint has tensors the model lacks: {unexpected[:5]}")


def load_trainer_state(folder: Path) -> dict:
    return torch.load(folder / TRAINER_STATE, weights_only=True)


def load_for_eval(path: str, base: str | None = None):
    """A model folder, or a LoRA adapter folder merged into its base, in float32, for inference.

    Weights load from safetensors only and no code from the folder runs. The adapter's base is
    `base`, else its `base_model_name_or_path`. Returns the model and the folder whose
    tokenizer goes with it (the adapter's own, when it saved one).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such model folder: {path}")
    adapter_of = adapter_base(path, base)
    if adapter_of is None:
        return _load_weights(path), path
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{path}: adapter without {ADAPTER_WEIGHTS} (only safetensors weights are loaded)"
        )
    from peft import PeftModel

    model = PeftModel.from_pretrained(_load_weights(adapter_of), path, is_trainable=False)
    return model.merge_and_unload(), tokenizer_folder(path, base)


def adapter_base(path: str, base: str | None = None) -> str | None:
    """The base model of a LoRA adapter folder (`base`, else its `base_model_name_or_path`);
    None for a full model folder."""
    config = Path(path) / ADAPTER_CONFIG
    if not config.is_file():
        return None
    found = base or json.loads(config.read_text()).get("base_model_name_or_path")
    if not found:
        raise ValueError(f"{path}: LoRA adapter without base_model_name_or_path; give its base")
    return found


def tokenizer_folder(path: str, base: str | None = None) -> str:
    """The folder whose tokenizer goes with a model: its own, or an adapter's base's when the
    adapter saved none."""
    adapter_of = adapter_base(path, base)
    folder = Path(path)
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    return path if adapter_of is None or has_tokenizer else adapter_of


# What `AutoTokenizer` reads from a model folder: the tokenizer's own files, and config.json,
# which can name the tokenizer's class.
TOKENIZER_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "config.json",
    "vocab*",
    "merges*",
    "*.model",
    "*.tiktoken",
    "spiece*",
    "chat_template*",
    "additional_chat_templates/*",
)


def tokenizer_digest(path: str) -> str:
    """A hash of the names and bytes of the files `AutoTokenizer` reads from a model folder:
    two folders with the same digest load the same tokenizer."""
    folder = Path(path)
    digest = hashlib.sha256()
    found = {p for pattern in TOKENIZER_FILES for p in folder.glob(pattern) if p.is_file()}
    for file in sorted(found):
        name = file.relative_to(folder).as_posix().encode()
        digest.update(len(name).to_bytes(4, "big") + name)
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _load_weights(path: str):
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, trust_remote_code=False, use_safetensors=True
    )
