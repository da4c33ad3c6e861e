"""The CLI function, the public API surface, and the package's import boundaries."""

from __future__ import annotations

import subprocess
import sys

import yaml

import merging
from merging.cli import main, merge_command
from tests.merging.conftest import load_all


def test_merge_command_merges_a_recipe_file(llama, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump({"merge_method": "linear", "models": [{"model": str(m)} for m in llama[1:]]})
    )
    out = merge_command(recipe, tmp_path / "out", progress=True)
    assert load_all(out).keys() == load_all(llama[1]).keys()
    assert "wrote" in capsys.readouterr().err


def test_main_reports_bad_recipes_without_a_traceback(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("merge_method: tie\nmodels: [{model: a}]\n")
    assert main([str(recipe), "--out", str(tmp_path / "out")]) == 2
    assert "unknown method 'tie'" in capsys.readouterr().err


def test_public_api():
    for name in (
        "merge",
        "load_recipe",
        "merge_adapters",
        "bake_adapter",
        "greedy_soup",
        "uniform_soup",
        "MergeError",
    ):
        assert hasattr(merging, name)
    assert issubclass(merging.MergeError, ValueError)
    assert {"linear", "ties", "della", "model_stock"} <= set(merging.known_methods())


def test_merging_imports_neither_ray_nor_engine():
    code = (
        "import sys, merging, merging.cli; "
        "print(any(m == 'ray' or m.startswith(('ray.', 'engine')) for m in sys.modules))"
    )
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )
