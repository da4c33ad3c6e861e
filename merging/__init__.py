"""raysoup's merging subsystem: merge methods, streaming merges, LoRA merging, soups.

Usable on its own, without Ray::

    import merging
    recipe = merging.load_recipe("recipe.yaml")      # any mergekit config is a recipe
    merging.merge(recipe, "out/merged", progress=True)
"""

from .api import merge, method_info
from .bake import bake_adapter
from .catalog import known_methods
from .errors import MergeError
from .lora import merge_adapters
from .methods import get_method, merge_method, native_methods
from .recipe import Recipe, load_recipe, parse_recipe
from .soups import GreedySoup, average_checkpoints, greedy_soup, select_checkpoints, uniform_soup

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
