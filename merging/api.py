"""``merge(recipe, out_dir)``: validate, pick the engine, write atomically, record provenance."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from merging import checks
from merging.catalog import describe
from merging.errors import MergeError
from merging.io import ModelFiles
from merging.mergekit_bridge import run_mergekit
from merging.native import run_native
from merging.output import staged_output
from merging.provenance import hash_model, source_hash, write_provenance
from merging.recipe import Recipe, load_recipe, parse_recipe


def merge(
    recipe: Recipe | dict[str, Any] | str | Path,
    out_dir: str | Path,
    *,
    progress: bool = False,
    overwrite: bool = False,
    workers: int = 2,
) -> Path:
    """Run ``recipe`` (a Recipe, a dict, or a YAML path) and return the output folder.

    The output appears at ``out_dir`` only once complete: config, tokenizer and
    generation config from the base (or first) model, sharded safetensors with an
    index, ``recipe.yaml`` and a ``README.md`` naming every source by content hash.
    Raises ``MergeError`` for mismatched, missing or non-finite tensors. ``workers``
    threads read and combine tensors concurrently (torch itself runs single-threaded
    per op meanwhile).
    """
    recipe = _as_recipe(recipe)
    refuse_adapters(recipe.input_models())
    if recipe.seed is None:
        recipe = recipe.model_copy(update={"seed": secrets.randbelow(2**31)})
    out_dir = Path(out_dir)
    with staged_output(out_dir, overwrite) as tmp:
        if recipe.resolved_engine() == "native":
            # The native engine hashes the input bytes as it reads them.
            streamed = run_native(recipe, tmp, progress=progress, workers=workers)
            sources = [
                source_hash(model, streamed[model]) if model in streamed else hash_model(model)
                for model in recipe.input_models()
            ]
        else:
            with ThreadPoolExecutor(2, thread_name_prefix="raysoup-hash") as pool:
                hashes = [pool.submit(hash_model, model) for model in recipe.input_models()]
                run_mergekit(recipe, tmp, progress=progress)
                verify_output(tmp, recipe)
                sources = [h.result() for h in hashes]
        write_provenance(tmp, recipe, sources)
    return out_dir


def refuse_adapters(models: list[str]) -> None:
    """Every input is a Hugging Face model folder: a LoRA adapter folder is not a model (say
    how to bake it into one first), and a folder without `config.json` would give a merged
    model nothing can load."""
    for model in models:
        folder = Path(model.split("+")[0])
        if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
            raise MergeError(
                f"{model}: this is a LoRA adapter, not a model; bake it into its base model "
                f"first (`raysoup bake {model} --out DIR`), or name it as mergekit's "
                "`base+adapter`, then merge the result"
            )
        if folder.is_dir() and not (folder / "config.json").is_file():
            raise MergeError(
                f"{model}: no config.json; a merge input is a Hugging Face model folder "
                "(config.json and safetensors weights)"
            )


def _as_recipe(recipe: Recipe | dict[str, Any] | str | Path) -> Recipe:
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe)
    return parse_recipe(recipe)


def verify_output(folder: Path, recipe: Recipe) -> None:
    """Refuse a mergekit output holding NaN or Inf, naming the inputs that carry it."""
    merged = ModelFiles(folder)
    for name in merged.names():
        try:
            checks.check_finite(
                name, merged.load(name), f"output of mergekit {recipe.merge_method}"
            )
        except MergeError as error:
            raise MergeError(f"{error}{_bad_inputs(name, recipe)}") from None


def _bad_inputs(name: str, recipe: Recipe) -> str:
    bad = []
    for model in recipe.input_models():
        files = ModelFiles(model.split("+")[0])
        if name in files.info and files.info[name].dtype.is_floating_point:
            if not bool(files.load(name).isfinite().all()):
                bad.append(model)
    return f"; non-finite in input {', '.join(bad)}" if bad else ""


def method_info(name: str) -> dict[str, Any]:
    """Parameters and defaults of a method as the recipe sees them (for docs and --help)."""
    info = describe(name)
    return {
        "name": info.name,
        "native": info.native,
        "base": info.base,
        "shared": info.shared,
        "per_model": info.per_model,
    }
