"""raysoup's merging subsystem: merge methods, streaming merges, LoRA merging, soups.

Usable on its own, without Ray::

    import merging
    recipe = merging.load_recipe("recipe.yaml")      # any mergekit config is a recipe
    merging.merge(recipe, "out/merged", progress=True)

The LoRA and soup functions are imported on first use: they import torch, whose
start-up (seconds) a merge that runs on numpy arrays never pays.
"""

import importlib

from merging.api import merge, method_info
from merging.catalog import known_methods
from merging.errors import MergeError
from merging.methods import get_method, merge_method, native_methods
from merging.recipe import Recipe, load_recipe, parse_recipe

_LAZY = {
    "bake_adapter": "bake",
    "merge_adapters": "lora",
    "GreedySoup": "soups",
    "average_checkpoints": "soups",
    "greedy_soup": "soups",
    "select_checkpoints": "soups",
    "uniform_soup": "soups",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GreedySoup",
    "MergeError",
    "Recipe",
    "average_checkpoints",
    "bake_adapter",
    "get_method",
    "greedy_soup",
    "known_methods",
    "load_recipe",
    "merge",
    "merge_adapters",
    "merge_method",
    "method_info",
    "native_methods",
    "parse_recipe",
    "select_checkpoints",
    "uniform_soup",
]
