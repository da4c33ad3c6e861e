"""Run a recipe through mergekit's own Python API (``mergekit.merge.run_merge``).

Used for every method raysoup does not implement natively, for ``slices`` and
``modules`` recipes, for ``path+lora`` references and tokenizer surgery, and when a
recipe says ``engine: mergekit``. mergekit runs in-process (its command takes ~10 s
just to start). raysoup's own keys are removed before mergekit sees the recipe.
"""

from __future__ import annotations

import logging
from pathlib import Path

from merging.errors import MergeError
from merging.io import copy_side_files
from merging.recipe import Recipe

_OURS = {"shard_size", "seed", "engine"}


def mergekit_config(recipe: Recipe):
    """The ``MergeConfiguration`` mergekit would read from the same YAML."""
    from mergekit.config import MergeConfiguration

    data = recipe.model_dump(mode="json", exclude_none=True, exclude=_OURS)
    return MergeConfiguration.model_validate(data)


def run_mergekit(recipe: Recipe, out_dir: Path, *, progress: bool = False) -> None:
    """Merge into ``out_dir`` with mergekit; errors come back as ``MergeError``."""
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    options = MergeOptions(
        out_shard_size=recipe.shard_size,
        random_seed=recipe.seed,
        quiet=not progress,
        write_model_card=False,  # raysoup writes its own card; mergekit's queries the hub
        copy_tokenizer=False,  # copied below, the same way as for native merges
        lazy_unpickle=True,
    )
    logging.getLogger("mergekit").setLevel(logging.WARNING if progress else logging.ERROR)
    try:
        run_merge(mergekit_config(recipe), str(out_dir), options)
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        raise MergeError(f"mergekit could not merge ({recipe.merge_method}): {error}") from error
    donor = recipe.base_model or recipe.input_models()[0]
    config = (out_dir / "config.json").read_bytes() if (out_dir / "config.json").exists() else None
    copy_side_files(Path(donor.split("+")[0]), out_dir, None)
    if config is not None:  # keep mergekit's config: slices may change the layer count
        (out_dir / "config.json").write_bytes(config)
