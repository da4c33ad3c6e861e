"""`raysoup merge` given bad recipes, bad inputs and bad places to write: each ends in one clear
message naming the field or the file (exit 2), never a traceback, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from engine.cli import app
from engine.demo.tiny import save_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return save_tiny_model(root / "a", seed=0), save_tiny_model(root / "b", seed=1)


def merge(tmp_path: Path, recipe: dict, out: Path, *flags: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return CliRunner().invoke(app, ["merge", str(path), "--out", str(out), *flags])


def linear(*models: Path, **extra) -> dict:
    entries = [{"model": str(m), "parameters": {"weight": 1.0}} for m in models]
    return {"merge_method": "linear", "models": entries, **extra}


def refused(result, *phrases: str) -> None:
    """Exit 2 with every phrase in the message, and no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    for phrase in phrases:
        assert phrase in result.output, result.output


def test_an_unknown_parameter_names_the_field(models, tmp_path, tally):
    recipe = linear(*models)
    recipe["models"][1]["parameters"] = {"wieght": 1.0}
    refused(merge(tmp_path, recipe, tmp_path / "out"), "models[1].parameters.wieght: unknown")
    tally.bad_input("merge recipe: unknown parameter")


def test_a_mergekit_recipe_without_weights_names_the_field(models, tmp_path, tally):
    recipe = {"merge_method": "linear", "engine": "mergekit", "models": [
        {"model": str(m)} for m in models
    ]}  # fmt: skip
    refused(merge(tmp_path, recipe, tmp_path / "out"), "parameters.weight: required by linear")
    tally.bad_input("merge recipe: mergekit engine without weights")


def test_an_existing_output_names_the_flag(models, tmp_path, tally):
    (tmp_path / "out").mkdir()
    result = merge(tmp_path, linear(*models), tmp_path / "out")
    refused(result, "already exists", "--overwrite")
    tally.bad_input("merge: output exists")


def test_overwriting_a_file_leaves_nothing_behind(models, tmp_path, tally):
    (tmp_path / "out").write_text("not a model")
    result = merge(tmp_path, linear(*models), tmp_path / "out", "--overwrite")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "config.json").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]
    tally.bad_input("merge: --overwrite over a file")


def test_an_input_without_config_is_refused(models, tmp_path, tally):
    bare = tmp_path / "bare"
    shutil.copytree(models[1], bare)
    (bare / "config.json").unlink()
    for inputs in ((models[0], bare), (bare, models[0])):
        result = merge(tmp_path, linear(*inputs), tmp_path / "out")
        refused(result, f"{bare}: no config.json")
        assert "different architectures" not in result.output
    assert not (tmp_path / "out").exists()
    tally.bad_input("merge: input without config.json", 2)


def test_a_truncated_safetensors_input_is_named(models, tmp_path, tally):
    cut = tmp_path / "cut"
    shutil.copytree(models[1], cut)
    weights = cut / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    refused(merge(tmp_path, linear(models[0], cut), tmp_path / "out"), f"{weights} is truncated")
    os.truncate(weights, 5)
    refused(merge(tmp_path, linear(models[0], cut), tmp_path / "out"), "not a readable")
    tally.bad_input("merge: truncated safetensors", 2)


def test_nan_weights_are_named(models, tmp_path, tally):
    poisoned = tmp_path / "poisoned"
    shutil.copytree(models[1], poisoned)
    weights = load_file(poisoned / "model.safetensors")
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, poisoned / "model.safetensors")
    result = merge(tmp_path, linear(models[0], poisoned), tmp_path / "out")
    refused(result, f"'{name}' contains NaN", str(poisoned))
    assert not (tmp_path / "out").exists()
    tally.bad_input("merge: NaN weights")


class _Planted:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, proof: Path) -> None:
        self.proof = proof

    def __reduce__(self):
        return (Path.touch, (self.proof,))


def test_pickle_weights_are_refused_without_loading(models, tmp_path, tally):
    proof = tmp_path / "unpickled"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(models[1] / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(_Planted(proof)))
    result = merge(tmp_path, linear(models[0], pickled), tmp_path / "out")
    refused(result, "pytorch_model.bin", "never loads")
    assert not proof.exists(), "the pickle was loaded"
    tally.bad_input("merge: pickle weights")


def test_a_read_only_output_folder_is_a_clear_error(models, tmp_path, small_disk, tally):
    disk = small_disk("1m", readonly=True)
    result = merge(tmp_path, linear(*models), disk / "out")
    refused(result, f"cannot write the merged model to {disk / 'out'}", "Read-only")
    tally.injected("read-only output folder")
    tally.survived("read-only output folder")


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(models, tmp_path, small_disk, tally):
    size = sum(p.stat().st_size for p in models[0].iterdir())
    disk = small_disk(f"{size // 2 // 1024}k")
    result = merge(tmp_path, linear(*models), disk / "out")
    refused(result, "no space left on the device", "nothing was left there")
    assert not [p.name for p in disk.iterdir()], "a partial output stayed on the disk"
    tally.injected("disk full while merging")
    tally.survived("disk full while merging")
    assert json.loads((models[0] / "config.json").read_text())  # inputs untouched
