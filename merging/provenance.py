"""What every output folder says about how it was made: ``recipe.yaml`` and ``README.md``.

The recipe is written with every method default spelled out (mergekit's task-vector
methods prune nothing unless ``density`` is set, which a reader should not have to
know), and each source model is named with the BLAKE3 digest of its safetensors files,
written ``blake3:<hex>``.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import yaml

from merging import catalog, hashcache
from merging.digest import labelled, new_hash
from merging.io import ModelFiles
from merging.recipe import Recipe


def raysoup_version() -> str:
    """The installed raysoup version, or ``0+unknown`` when running from a source tree."""
    try:
        return importlib.metadata.version("raysoup")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class SourceHash:
    """A model folder and the content hash of its weights (hex BLAKE3 digests)."""

    model: str
    digest: str
    files: dict[str, str]


def hash_model(model: str) -> SourceHash:
    """BLAKE3 over the sorted ``name digest`` lines of the model's safetensors files."""
    folder = Path(model.split("+")[0])
    return source_hash(
        model, {path.name: hashcache.digest(path) for path in ModelFiles(folder).files}
    )


def source_hash(model: str, files: dict[str, str]) -> SourceHash:
    """The model-level digest from per-file digests (however they were computed)."""
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return SourceHash(model, new_hash(lines.encode()).hexdigest(), files)


def explicit(recipe: Recipe) -> Recipe:
    """The recipe with the defaults of every parameter it does not set written in."""
    info = catalog.describe(recipe.merge_method, recipe.resolved_engine())
    given = set(recipe.parameters or {}) | {
        k for m in recipe.models or [] for k in (m.parameters or {})
    }
    every = {**info.shared, **info.per_model}
    defaults = {k: v for k, v in every.items() if k not in given and v is not catalog.REQUIRED}
    return recipe.model_copy(update={"parameters": {**(recipe.parameters or {}), **defaults}})


def write_provenance(folder: Path, recipe: Recipe, sources: list[SourceHash]) -> None:
    """Write ``recipe.yaml`` (loadable by raysoup and mergekit) and the ``README.md`` card."""
    full = explicit(recipe)
    header = [f"# Made by raysoup {raysoup_version()} ({recipe.resolved_engine()} engine)."]
    header += [f"# source {s.model} {labelled(s.digest)}" for s in sources]
    (folder / "recipe.yaml").write_text("\n".join(header) + "\n" + full.to_yaml())
    (folder / "README.md").write_text(model_card(full, sources))


def model_card(recipe: Recipe, sources: list[SourceHash]) -> str:
    """A Hugging Face model card naming the method, its parameters and every source."""
    roles = {recipe.base_model: "base"}
    intro = (
        f"Made with raysoup {raysoup_version()} by the `{recipe.merge_method}` method "
        f"({recipe.resolved_engine()} engine)."
    )
    return _card(
        f"Merged model ({recipe.merge_method})",
        recipe.merge_method,
        intro,
        recipe.to_yaml(),
        sources,
        roles,
        _notes(recipe),
    )


def write_card(
    folder: Path, title: str, spec: dict, sources: list[SourceHash], roles: dict | None = None
) -> None:
    """Provenance for outputs that are not recipe merges (adapter merges, baked adapters)."""
    text = yaml.safe_dump(spec, sort_keys=False)
    header = [f"# Made by raysoup {raysoup_version()}."] + [
        f"# source {s.model} {labelled(s.digest)}" for s in sources
    ]
    (folder / "recipe.yaml").write_text("\n".join(header) + "\n" + text)
    intro = f"Made with raysoup {raysoup_version()}."
    method = str(next(iter(spec.values())))
    (folder / "README.md").write_text(_card(title, method, intro, text, sources, roles or {}, []))


def _card(title, method, intro, recipe_yaml, sources, roles, notes) -> str:
    rows = [
        f"| {roles.get(s.model, 'model')} | `{s.model}` | `{labelled(s.digest)}` |" for s in sources
    ]
    front = yaml.safe_dump(
        {"library_name": "transformers", "tags": ["raysoup", "merge", method]}
    ).strip()
    return "\n".join(
        [
            "---",
            front,
            "---",
            f"# {title}",
            "",
            intro,
            "",
            "## Sources",
            "",
            "| role | model | content hash of safetensors files |",
            "|---|---|---|",
            *rows,
            "",
            "## Recipe (defaults written out)",
            "",
            "```yaml",
            recipe_yaml.rstrip(),
            "```",
            *notes,
            "",
        ]
    )


def _notes(recipe: Recipe) -> list[str]:
    density = (recipe.parameters or {}).get("density")
    if density == 1.0 and recipe.merge_method not in ("graft",):
        return [
            "",
            "Note: `density: 1.0` (the default) keeps every entry of every task vector: "
            "nothing was pruned.",
        ]
    return []
