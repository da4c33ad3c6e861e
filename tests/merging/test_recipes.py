"""Recipes: mergekit's format accepted as is, shipped examples parse, bad recipes name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import merging
from merging.mergekit_bridge import mergekit_config
from merging.recipe import parse_recipe

EXAMPLES = sorted((Path(merging.__file__).parent / "examples").glob("*.yaml"))

MERGEKIT_README_EXAMPLE = """
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"""


def test_there_are_examples():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_and_mergekit_reads_it_too(path):
    recipe = merging.load_recipe(path)
    assert recipe.merge_method in merging.known_methods()
    mergekit_config(recipe)  # mergekit's own pydantic model accepts the same recipe


def test_examples_pick_the_expected_engine():
    engines = {p.stem: merging.load_recipe(p).resolved_engine() for p in EXAMPLES}
    assert engines["ties"] == "native" and engines["linear_soup"] == "native"
    assert engines["della_mergekit"] == "mergekit" and engines["passthrough_slices"] == "mergekit"


def test_mergekit_readme_config_is_a_recipe():
    recipe = parse_recipe(yaml.safe_load(MERGEKIT_README_EXAMPLE))
    assert recipe.resolved_engine() == "native"
    assert recipe.models[2].parameters["weight"][0].filter == "mlp"
    assert parse_recipe(yaml.safe_load(recipe.to_yaml())) == recipe


def test_shard_size_accepts_units():
    base = {"merge_method": "linear", "models": [{"model": "a"}]}
    assert parse_recipe({**base, "shard_size": "500MB"}).shard_size == 500 * 10**6
    assert parse_recipe({**base, "shard_size": 1234}).shard_size == 1234


GOOD = {
    "merge_method": "ties",
    "base_model": "b",
    "models": [{"model": "a", "parameters": {"weight": 1.0}}],
}
BAD = [
    ({"merge_method": "tie"}, r"merge_method[\s\S]*unknown method 'tie'; known: .*ties"),
    ({"dtype": "fp8"}, r"dtype[\s\S]*'float32', 'float16' or 'bfloat16'"),
    ({"out_dtype": "int8"}, r"out_dtype[\s\S]*'float32'"),
    (
        {"parameters": {"densty": 0.5}},
        r"parameters.densty: unknown parameter for ties; allowed: density, ",
    ),
    (
        {"models": [{"model": "a", "parameters": {"normalize": True}}]},
        r"models\[0\].parameters.normalize: .*shared",
    ),
    (
        {"models": [{"model": "a", "weight": 1}]},
        r"models\[0\].weight: unknown key; allowed here: model, parameters",
    ),
    ({"base_model": None}, r"base_model: ties needs a base model"),
    ({"shard_size": "lots"}, r"shard_size[\s\S]*not a size"),
    ({"engine": "fast"}, r"engine[\s\S]*'auto', 'native' or 'mergekit'"),
    ({"merge_method": "graft", "engine": "mergekit"}, r"engine: method 'graft' is native only"),
    (
        {"merge_method": "della", "engine": "native"},
        r"engine: 'native' cannot run this recipe .*not native",
    ),
    ({"merge_method": "slerp", "models": [{"model": "a"}]}, r"parameters.t: required by slerp"),
    (
        {"engine": "mergekit", "models": [{"model": "a"}]},
        r"models\[0\].parameters.weight: required by ties",
    ),
    ({"models": None}, r"models/slices/modules: give exactly one"),
    ({"mdoels": []}, r"mdoels: unknown key; allowed here: merge_method, models"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[next(iter(c)) for c, _ in BAD])
def test_bad_recipes_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        parse_recipe({**GOOD, **change})


def test_load_recipe_rejects_non_mappings(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- just a list\n")
    with pytest.raises(ValueError, match="a recipe is a YAML mapping"):
        merging.load_recipe(path)


def test_method_info_shows_defaults():
    info = merging.method_info("ties")
    assert info["per_model"]["density"] == 1.0 and info["shared"]["normalize"] is True
