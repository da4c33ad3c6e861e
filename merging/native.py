"""Run a recipe with a native method: stream every tensor through the method function."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checks
from .io import ModelFiles, ShardedWriter, StreamingHash, TensorInfo, copy_side_files
from .methods import MethodSpec, get_method
from .params import ParameterResolver
from .recipe import Recipe
from .stream import stream

DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BLOCK_BYTES = 16 << 20  # elementwise methods see large tensors in row blocks of about this size


@dataclass
class Inputs:
    """The recipe's models opened for reading, split into base and the others."""

    files: dict[str, ModelFiles]
    base: str | None
    others: list[str]

    @property
    def order(self) -> list[str]:
        """Base first (when the method uses one), then the others: the loader's order."""
        return ([self.base] if self.base else []) + self.others


def open_inputs(recipe: Recipe, spec: MethodSpec) -> Inputs:
    """Open every input model; the base is separated only for methods that use one."""
    files = {name: ModelFiles(name) for name in recipe.input_models()}
    checks.check_architectures(files)
    entries = [entry.model for entry in recipe.models or []]
    if spec.base == "required":
        return Inputs(files, recipe.base_model, [m for m in entries if m != recipe.base_model])
    if recipe.base_model and recipe.base_model not in entries:
        entries.append(recipe.base_model)  # as mergekit does: a base given to linear is one more input
    return Inputs(files, None, list(dict.fromkeys(entries)))


def run_native(recipe: Recipe, out_dir: Path, *, progress: bool = False, workers: int = 2) -> dict[str, dict[str, str]]:
    """Merge into ``out_dir``, which exists and is empty; returns ``{model: {file: sha256}}``."""
    spec = get_method(recipe.merge_method)
    inputs = open_inputs(recipe, spec)
    used = {name: inputs.files[name] for name in inputs.order}
    names = checks.check_tensor_sets(used)
    requested = DTYPE_NAMES.get(recipe.out_dtype or recipe.dtype or "")
    plan = [(name, _out_info(name, used, requested)) for name in names]
    donor = inputs.files[recipe.base_model or inputs.order[0]]  # config and tokenizer come from here
    resolver = ParameterResolver(recipe, spec, inputs.others, _num_layers(donor.config()))
    combine = _Combiner(spec, resolver, inputs, dict(plan), recipe.seed or 0)
    writer = ShardedWriter(out_dir, plan, recipe.shard_size)
    items = work_items(plan, BLOCK_BYTES if spec.elementwise else None)
    hashes = {model: StreamingHash(inputs.files[model]) for model in inputs.order}
    stream(items, combine.load, combine, writer, progress=progress, workers=workers, on_loaded=_feeder(hashes))
    floats = [info.dtype for _, info in plan if info.dtype.is_floating_point]
    copy_side_files(donor.folder, out_dir, floats[0] if floats else None)
    return {model: hashes[model].digests() for model in inputs.order}


def _feeder(hashes: dict[str, StreamingHash]):
    """Hash each input's stored bytes as they pass (called in item order)."""

    def feed(item: tuple[str, tuple[int, int] | None], loaded: "Loaded") -> None:
        for raw, hasher in zip(loaded.raw, hashes.values()):
            hasher.feed(item[0], item[1], raw)

    return feed


def _out_info(name: str, used: dict[str, ModelFiles], requested: torch.dtype | None) -> TensorInfo:
    infos = {model: files.info[name] for model, files in used.items()}
    checks.check_shapes(name, infos)
    first = next(iter(infos.values()))
    return TensorInfo(checks.output_dtype(list(infos.values()), requested), first.shape)


def work_items(plan: list[tuple[str, TensorInfo]], block_bytes: int | None) -> list[tuple[str, tuple[int, int] | None]]:
    """One item per tensor, or, with ``block_bytes``, row blocks of the large ones."""
    items = []
    for name, info in plan:
        rows = info.shape[0] if info.shape else 0
        row_bytes = 4 * (info.nbytes // max(1, rows) // info.dtype.itemsize) if rows else 0
        if not block_bytes or rows < 2 or rows * row_bytes <= block_bytes:
            items.append((name, None))
            continue
        step = max(1, block_bytes // max(1, row_bytes))
        items += [(name, (start, min(rows, start + step))) for start in range(0, rows, step)]
    return items


def _num_layers(config: dict) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    return 1


def tensor_seed(seed: int, name: str) -> int:
    """A stable per-tensor seed, so a random method gives the same result on every run."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


@dataclass
class Loaded:
    """One item of every input: float32 tensors for the method, stored bytes for hashing."""

    tensors: list[torch.Tensor]
    raw: list[torch.Tensor]


class _Combiner:
    """Loads one tensor from every input and applies the method to it."""

    def __init__(self, spec: MethodSpec, resolver: ParameterResolver, inputs: Inputs, plan: dict, seed: int):
        self.spec, self.resolver, self.inputs, self.plan, self.seed = spec, resolver, inputs, plan, seed

    def load(self, item: tuple[str, tuple[int, int] | None]) -> Loaded:
        name, rows = item
        loaded = Loaded([], [])
        for model in self.inputs.order:
            raw = self.inputs.files[model].load(name, rows)
            tensor = raw.to(torch.float32) if raw.is_floating_point() else raw
            checks.check_finite(name, tensor, f"input {model}")
            loaded.raw.append(raw)
            loaded.tensors.append(tensor)
        return loaded

    def __call__(self, item: tuple[str, tuple[int, int] | None], loaded: Loaded) -> torch.Tensor:
        name, tensors = item[0], loaded.tensors
        out = self.plan[name]
        if not tensors[0].is_floating_point():
            return checks.check_equal(name, dict(zip(self.inputs.order, tensors)))
        generator = torch.Generator().manual_seed(tensor_seed(self.seed, name)) if self.spec.random else None
        base = tensors[0] if self.inputs.base else None
        models = tensors[1:] if self.inputs.base else tensors
        merged = self.spec(base, models, self.resolver.resolve(name), generator)
        checks.check_finite(name, merged, f"output of {self.spec.name} over {', '.join(self.inputs.order)}")
        return merged.to(out.dtype)
