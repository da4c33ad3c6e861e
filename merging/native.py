"""Run a recipe with a native method: stream every tensor through the method function.

Methods with an array kernel that reproduces them exactly for the recipe's values run
on numpy arrays and never import torch (whose start-up is about 3 s: most of the time
of a small merge); every other merge runs on torch tensors. Both read, check, hash and
write the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merging import arrays, checks, hashcache
from merging.digest import HashLanes, StreamingHash
from merging.io import CODES, DTYPE_NAMES, ModelFiles, ShardedWriter, TensorInfo, copy_side_files
from merging.methods import MethodSpec, get_method
from merging.params import ParameterResolver
from merging.recipe import Recipe
from merging.stream import stream

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
        entries.append(
            recipe.base_model
        )  # as mergekit does: a base given to linear is one more input
    return Inputs(files, None, list(dict.fromkeys(entries)))


def run_native(
    recipe: Recipe, out_dir: Path, *, progress: bool = False, workers: int = 2
) -> dict[str, dict[str, str]]:
    """Merge into ``out_dir``, which exists and is empty; returns ``{model: {file: hex
    digest}}``."""
    spec = get_method(recipe.merge_method)
    inputs = open_inputs(recipe, spec)
    used = {name: inputs.files[name] for name in inputs.order}
    names = checks.check_tensor_sets(used)
    requested = CODES.get(recipe.out_dtype or recipe.dtype or "")
    plan = [(name, _out_info(name, used, requested)) for name in names]
    donor = inputs.files[
        recipe.base_model or inputs.order[0]
    ]  # config and tokenizer come from here
    resolver = ParameterResolver(recipe, spec, inputs.others, _num_layers(donor.config()))
    ops = ArrayOps() if runs_on_arrays(spec, resolver, used, plan) else TorchOps()
    combine = _Combiner(spec, resolver, inputs, dict(plan), recipe.seed or 0, ops)
    writer = ShardedWriter(out_dir, plan, recipe.shard_size)
    items = work_items(plan, BLOCK_BYTES if spec.elementwise else None)
    hashes = {model: _hasher(inputs.files[model]) for model in inputs.order}
    with HashLanes(list(hashes.values())) as lanes:
        feed = (lambda item, loaded: lanes(item, loaded.raw)) if lanes.needed else None
        stream(
            items, combine.load, combine, writer, progress=progress, workers=workers, on_loaded=feed
        )
    floats = [info.code for _, info in plan if info.is_floating_point]
    copy_side_files(donor.folder, out_dir, floats[0] if floats else None)
    return {model: _digests(hashes[model]) for model in inputs.order}


def _hasher(files: ModelFiles) -> StreamingHash:
    """A streaming hash of the model's files whose digest the cache does not hold."""
    known = {path: hashcache.cached(path) for path in files.files}
    return StreamingHash(files, {path: digest for path, digest in known.items() if digest})


def _digests(hasher: StreamingHash) -> dict[str, str]:
    """``{file name: hex digest}``; digests computed here are remembered for the next merge."""
    digests = hasher.digests()
    for path, digest in digests.items():
        if path not in hasher.known:
            hashcache.remember(path, digest)
    return {path.name: digest for path, digest in digests.items()}


def runs_on_arrays(
    spec: MethodSpec,
    resolver: ParameterResolver,
    used: dict[str, ModelFiles],
    plan: list[tuple[str, TensorInfo]],
) -> bool:
    """Whether the method's array kernel gives exactly its torch result for this merge:
    float32, float16 or bfloat16 throughout, and parameter values the kernel accepts."""
    if spec.array_fn is None or spec.random:
        return False
    codes = {
        info.code
        for files in used.values()
        for info in files.info.values()
        if info.is_floating_point
    }
    codes |= {info.code for _, info in plan if info.is_floating_point}
    if not codes <= set(arrays.FLOAT_CODES):
        return False
    count = len(resolver.per_model)
    return all(
        spec.accepts_arrays(resolver.resolve(name), count)
        for name, info in plan
        if info.is_floating_point
    )


def _out_info(name: str, used: dict[str, ModelFiles], requested: str | None) -> TensorInfo:
    infos = {model: files.info[name] for model, files in used.items()}
    checks.check_shapes(name, infos)
    first = next(iter(infos.values()))
    return TensorInfo(checks.output_dtype(list(infos.values()), requested), first.shape)


def work_items(
    plan: list[tuple[str, TensorInfo]], block_bytes: int | None
) -> list[tuple[str, tuple[int, int] | None]]:
    """One item per tensor, or, with ``block_bytes``, row blocks of the large ones."""
    items = []
    for name, info in plan:
        rows = info.shape[0] if info.shape else 0
        row_bytes = 4 * (info.nbytes // max(1, rows) // info.itemsize) if rows else 0
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
    """One item of every input: float32 values for the method, stored bytes for hashing."""

    tensors: list[Any]
    raw: list[Any]


class TorchOps:
    """Reads into torch tensors and runs the method's torch function."""

    arrays = False

    def __init__(self):
        import torch  # here, before streaming starts: the streaming loop sets torch's thread count

        self.torch = torch

    def read(self, files: ModelFiles, name: str, rows: tuple[int, int] | None):
        return files.load(name, rows)

    def widen(self, raw, code: str):
        return raw.to(self.torch.float32)

    def narrow(self, merged, code: str):
        return merged.to(getattr(self.torch, DTYPE_NAMES[code]))

    def generator(self, seed: int):
        return self.torch.Generator().manual_seed(seed)


class ArrayOps:
    """Reads into numpy arrays and runs the method's array kernel (no torch)."""

    arrays = True

    def read(self, files: ModelFiles, name: str, rows: tuple[int, int] | None):
        return files.load_array(name, rows)

    def widen(self, raw, code: str):
        return arrays.to_float32(raw, code)

    def narrow(self, merged, code: str):
        return arrays.from_float32(merged, code)


class _Combiner:
    """Loads one tensor from every input and applies the method to it."""

    def __init__(
        self,
        spec: MethodSpec,
        resolver: ParameterResolver,
        inputs: Inputs,
        plan: dict,
        seed: int,
        ops: TorchOps | ArrayOps,
    ):
        self.spec, self.resolver, self.inputs, self.plan, self.seed, self.ops = (
            spec,
            resolver,
            inputs,
            plan,
            seed,
            ops,
        )

    def load(self, item: tuple[str, tuple[int, int] | None]) -> Loaded:
        name, rows = item
        loaded = Loaded([], [])
        for model in self.inputs.order:
            files = self.inputs.files[model]
            raw = self.ops.read(files, name, rows)
            code = files.info[name].code
            tensor = self.ops.widen(raw, code) if files.info[name].is_floating_point else raw
            checks.check_finite(name, tensor, f"input {model}")
            loaded.raw.append(raw)
            loaded.tensors.append(tensor)
        return loaded

    def __call__(self, item: tuple[str, tuple[int, int] | None], loaded: Loaded):
        name, tensors = item[0], loaded.tensors
        out = self.plan[name]
        if not out.is_floating_point:
            return checks.check_equal(name, dict(zip(self.inputs.order, tensors)))
        generator = self.ops.generator(tensor_seed(self.seed, name)) if self.spec.random else None
        base = tensors[0] if self.inputs.base else None
        models = tensors[1:] if self.inputs.base else tensors
        merged = self.spec(
            base, models, self.resolver.resolve(name), generator, arrays=self.ops.arrays
        )
        checks.check_finite(
            name, merged, f"output of {self.spec.name} over {', '.join(self.inputs.order)}"
        )
        return self.ops.narrow(merged, out.code)
