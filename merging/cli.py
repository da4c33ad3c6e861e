"""The ``raysoup merge RECIPE --out DIR`` command as a plain function.

``engine.cli`` wires :func:`merge_command` into typer; ``python -m merging.cli`` runs
it without the rest of raysoup (the interrupted-merge test uses that).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from merging.api import merge
from merging.errors import MergeError
from merging.recipe import load_recipe


def merge_command(
    recipe_path: Path,
    out: Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 2,
) -> Path:
    """Merge the models a recipe file names into ``out``; prints where it went.

    recipe_path: a raysoup recipe or any mergekit configuration YAML.
    out: output folder; it appears only when the merge is complete.
    overwrite: replace ``out`` if it exists.
    progress: show per-tensor progress with rich.
    workers: threads reading and combining tensors concurrently.
    """
    console = Console(stderr=True)
    recipe = load_recipe(recipe_path)
    engine = recipe.resolved_engine()
    console.print(
        f"[bold]{recipe.merge_method}[/] over {len(recipe.input_models())} models ({engine} engine)"
    )
    path = merge(recipe, out, progress=progress, overwrite=overwrite, workers=workers)
    console.print(f"wrote [green]{path}[/]")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m merging.cli RECIPE --out DIR [--overwrite] [--no-progress]``."""
    parser = argparse.ArgumentParser(
        prog="python -m merging.cli", description=merge_command.__doc__.split("\n")[0]
    )
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        merge_command(
            args.recipe, args.out, overwrite=args.overwrite, progress=not args.no_progress
        )
    except (MergeError, ValueError) as error:
        Console(stderr=True).print(f"[red]error:[/] {error}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
