"""LoRA adapters (PEFT format): merge in adapter space, or bake into full weights.

A PEFT LoRA module holds ``A`` (r x in) and ``B`` (out x r); its weight update is
``delta = s * B @ A`` with ``s = lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA).

- ``stack`` is exact: ``A = [A_1; A_2; ...]`` and ``B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]``, so
  ``B @ A = sum_i w_i delta_i``; the rank is the sum of the ranks and the scale is 1.
- ``svd`` forms ``sum_i w_i delta_i`` and truncates its SVD to ``rank`` (default: the
  largest input rank); exact when ``rank`` reaches the rank of the sum.
- PEFT's own ``add_weighted_adapter`` combination types (``linear``, ``cat``, ``ties``,
  ``dare_linear``, ``magnitude_prune``, their ``_svd`` variants, ...) run through PEFT.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from merging.errors import MergeError
from merging.io import ModelFiles
from merging.output import staged_output
from merging.provenance import hash_model, write_card

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<part>[AB])(?:\.weight)?$")
NATIVE = ("stack", "svd")
PEFT_TYPES = (
    "svd",
    "linear",
    "cat",
    "ties",
    "ties_svd",
    "dare_ties",
    "dare_linear",
    "dare_ties_svd",
    "dare_linear_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
)


class Adapter:
    """A PEFT LoRA adapter folder: its config and its (A, B, scale) per module."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / ADAPTER_CONFIG).exists():
            raise MergeError(f"{self.folder} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
        self.config = json.loads((self.folder / ADAPTER_CONFIG).read_text())
        if self.config.get("peft_type", "LORA") != "LORA" or self.config.get("use_dora"):
            raise MergeError(
                f"{self.folder}: only plain LoRA adapters are supported (not DoRA or other PEFT "
                "types)"
            )
        self.files = ModelFiles(self.folder)
        self.modules, self.extra = _split_keys(self.files.names(), self.folder)

    def pair(self, module: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(A, B, scale)`` of one module, in float32."""
        a_key, b_key = self.modules[module]
        a, b = self.files.load_float32(a_key), self.files.load_float32(b_key)
        return a, b, self.scale(module, a.shape[0])

    def scale(self, module: str, rank: int) -> float:
        alpha = _pattern(self.config.get("alpha_pattern") or {}, module, self.config["lora_alpha"])
        return alpha / (rank**0.5 if self.config.get("use_rslora") else rank)

    def delta(self, module: str) -> torch.Tensor:
        """The module's weight update ``s * B @ A`` in adapter layout (out x in)."""
        a, b, scale = self.pair(module)
        return scale * (b @ a)


def _split_keys(names: Sequence[str], folder: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    pairs: dict[str, dict[str, str]] = {}
    extra = []
    for name in names:
        match = _LORA.match(name)
        if match:
            pairs.setdefault(match["module"], {})[match["part"]] = name
        else:
            extra.append(name)
    broken = [m for m, p in pairs.items() if set(p) != {"A", "B"}]
    if broken:
        raise MergeError(f"{folder}: module {broken[0]!r} lacks lora_A or lora_B")
    return {m: (p["A"], p["B"]) for m, p in pairs.items()}, extra


def _pattern(patterns: dict, module: str, default: float) -> float:
    """PEFT's rank/alpha pattern lookup: a key matches a module name suffix."""
    name = module.removeprefix(PREFIX)
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def merge_adapters(
    adapters: Sequence[str | Path],
    out_dir: str | Path,
    *,
    weights: Sequence[float] | None = None,
    method: str = "stack",
    rank: int | None = None,
    base_model: str | Path | None = None,
    density: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge LoRA adapters into one adapter folder at ``out_dir``; returns it.

    ``method`` is ``stack`` (exact, rank = sum of ranks), ``svd`` (truncated to ``rank``)
    or a PEFT ``add_weighted_adapter`` combination type, which needs ``base_model``
    (default: the first adapter's ``base_model_name_or_path``) and uses ``rank`` as
    ``svd_rank`` and ``density`` for the pruning types.
    """
    loaded = [Adapter(a) for a in adapters]
    weights = list(weights) if weights is not None else [1.0] * len(loaded)
    if len(weights) != len(loaded):
        raise MergeError(f"weights: {len(weights)} given for {len(loaded)} adapters")
    if method not in NATIVE and method not in PEFT_TYPES:
        raise MergeError(
            f"method: unknown adapter merge {method!r}; allowed: {', '.join(NATIVE + PEFT_TYPES)}"
        )
    params = {"weights": weights, "rank": rank, "density": density}
    with staged_output(out_dir, overwrite) as tmp:
        if method in NATIVE:
            _native_adapter_merge(loaded, weights, method, rank, tmp)
        else:
            _peft_adapter_merge(loaded, weights, method, rank, density, base_model, tmp)
        sources = [hash_model(str(a.folder)) for a in loaded]
        write_card(
            tmp, f"LoRA adapter merge ({method})", {"adapter_merge": method, **params}, sources
        )
    return Path(out_dir)


def _native_adapter_merge(
    loaded: list[Adapter], weights: list[float], method: str, rank: int | None, out: Path
) -> None:
    modules = list(loaded[0].modules)
    for adapter in loaded[1:]:
        if set(adapter.modules) != set(modules):
            missing = sorted(set(modules) ^ set(adapter.modules))[0]
            raise MergeError(
                f"adapters target different modules: {missing!r} (in {loaded[0].folder} vs "
                f"{adapter.folder})"
            )
    if any(a.extra for a in loaded):
        folder = next(a for a in loaded if a.extra).folder
        raise MergeError(f"{folder}: modules_to_save are not merged in adapter space")
    tensors, ranks = {}, {}
    for module in modules:
        a, b = (
            _stack(loaded, weights, module)
            if method == "stack"
            else _svd(loaded, weights, module, rank)
        )
        a_key, b_key = loaded[0].modules[module]
        tensors[a_key], tensors[b_key] = a.contiguous(), b.contiguous()
        ranks[module] = a.shape[0]
    save_file(tensors, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(
        json.dumps(_merged_config(loaded[0].config, ranks), indent=2) + "\n"
    )


def _stack(
    loaded: list[Adapter], weights: list[float], module: str
) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [adapter.pair(module) for adapter in loaded]
    a = torch.cat([a for a, _, _ in pairs], dim=0)
    b = torch.cat([w * s * b for (_, b, s), w in zip(pairs, weights)], dim=1)
    return a, b


def _svd(
    loaded: list[Adapter], weights: list[float], module: str, rank: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    delta = sum(w * adapter.delta(module) for adapter, w in zip(loaded, weights))
    rank = rank or max(adapter.pair(module)[0].shape[0] for adapter in loaded)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = s[:rank].sqrt()
    return root[:, None] * vh[:rank], u[:, :rank] * root


def _merged_config(config: dict, ranks: dict[str, int]) -> dict:
    """The first adapter's config with ranks set and every scale equal to 1 (alpha = r)."""
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    odd = {m.removeprefix(PREFIX): r for m, r in ranks.items() if r != common}
    return {
        **config,
        "r": common,
        "lora_alpha": common,
        "use_rslora": False,
        "rank_pattern": odd,
        "alpha_pattern": dict(odd),
    }


def _peft_adapter_merge(loaded, weights, method, rank, density, base_model, out: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = base_model or loaded[0].config.get("base_model_name_or_path")
    if not base_path or not Path(base_path).exists():
        raise MergeError(
            f"base_model: PEFT's {method} needs the base model folder; got {base_path!r}"
        )
    base = AutoModelForCausalLM.from_pretrained(base_path)
    model = PeftModel.from_pretrained(base, loaded[0].folder, adapter_name="a0")
    for i, adapter in enumerate(loaded[1:], start=1):
        model.load_adapter(adapter.folder, adapter_name=f"a{i}")
    names = [f"a{i}" for i in range(len(loaded))]
    model.add_weighted_adapter(
        names, list(weights), "merged", combination_type=method, svd_rank=rank, density=density
    )
    scratch = out / "_peft"
    model.save_pretrained(scratch, selected_adapters=["merged"])
    for path in (scratch / "merged").iterdir():
        shutil.move(str(path), out / path.name)
    shutil.rmtree(scratch)
