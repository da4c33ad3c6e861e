"""Bake a LoRA adapter into full weights: ``W + scale * B @ A``, streamed tensor by tensor.

The result is a normal model folder (config, tokenizer and generation config from the
base) that loads without PEFT; it equals PEFT's ``merge_and_unload``. Tensors saved by
``modules_to_save`` replace the base tensor of the same name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from merging import checks
from merging.errors import MergeError
from merging.io import CODES, ModelFiles, ShardedWriter, TensorInfo, copy_side_files
from merging.lora import PREFIX, Adapter
from merging.output import staged_output
from merging.provenance import hash_model, write_card
from merging.stream import stream


def bake_adapter(
    base_model: str | Path,
    adapter: str | Path,
    out_dir: str | Path,
    *,
    weight: float = 1.0,
    out_dtype: str | None = None,
    shard_size: int = 5 * 10**9,
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``base + weight * scale * B @ A`` for every adapted module to ``out_dir``."""
    base, lora = ModelFiles(base_model), Adapter(adapter)
    updates = _targets(base, lora)
    requested = CODES.get(out_dtype or "")
    plan = [
        (name, TensorInfo(checks.output_dtype([info], requested), info.shape))
        for name, info in base.info.items()
    ]
    with staged_output(out_dir, overwrite) as tmp:
        writer = ShardedWriter(tmp, plan, shard_size)

        def load(item):
            return [
                base.load_float32(item[0])
                if base.info[item[0]].dtype.is_floating_point
                else base.load(item[0])
            ]

        def combine(item, tensors):
            return _apply(item[0], tensors[0], updates.get(item[0]), lora, weight).to(
                dict(plan)[item[0]].dtype
            )

        stream([(name, None) for name, _ in plan], load, combine, writer, progress=progress)
        floats = [info.code for _, info in plan if info.is_floating_point]
        copy_side_files(base.folder, tmp, floats[0] if floats else None)
        spec = {
            "bake_adapter": str(adapter),
            "base_model": str(base_model),
            "weight": weight,
            "out_dtype": out_dtype,
        }
        write_card(
            tmp,
            "Baked LoRA adapter",
            spec,
            [hash_model(str(base_model)), hash_model(str(adapter))],
            {str(base_model): "base", str(adapter): "adapter"},
        )
    return Path(out_dir)


def _targets(base: ModelFiles, lora: Adapter) -> dict[str, tuple[str, str]]:
    """Base tensor name -> ("lora", module) or ("replace", adapter tensor name)."""
    targets = {}
    for module in lora.modules:
        name = module.removeprefix(PREFIX) + ".weight"
        if name not in base.info:
            raise MergeError(
                f"adapter module {module!r} has no base tensor {name!r} in {base.folder}"
            )
        targets[name] = ("lora", module)
    for key in lora.extra:
        name = key.removeprefix(PREFIX).replace(".modules_to_save.default", "")
        if name not in base.info:
            raise MergeError(f"adapter tensor {key!r} matches no base tensor in {base.folder}")
        targets[name] = ("replace", key)
    return targets


def _apply(name: str, tensor: torch.Tensor, target, lora: Adapter, weight: float) -> torch.Tensor:
    checks.check_finite(name, tensor, "input base model")
    if target is None:
        return tensor
    kind, key = target
    if kind == "replace":
        return lora.files.load_float32(key)
    delta = lora.delta(key)
    if "lora_embedding" in lora.modules[key][0] or lora.config.get("fan_in_fan_out"):
        delta = delta.T
    if delta.shape != tensor.shape:
        raise MergeError(
            f"tensor {name!r}: adapter update {tuple(delta.shape)} does not fit base "
            f"{tuple(tensor.shape)}"
        )
    merged = tensor + weight * delta
    checks.check_finite(name, merged, f"base plus adapter {lora.folder}")
    return merged
