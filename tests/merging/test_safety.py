"""Refusals, atomic output, provenance, and what an interrupted merge leaves behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest
import torch
import yaml
from safetensors.torch import save_file

import merging
from merging import MergeError
from merging.output import TMP_MARK
from tests.merging.conftest import load_all

REPO = Path(__file__).resolve().parents[2]


def variant(source: Path, dest: Path, edit) -> Path:
    """A copy of ``source`` whose tensors went through ``edit(dict) -> dict``."""
    shutil.copytree(source, dest)
    for f in dest.glob("*.safetensors"):
        f.unlink()
    save_file(edit(load_all(source)), dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def linear(*models, **extra):
    return {"merge_method": "linear", "models": [{"model": str(m)} for m in models], **extra}


def sha_files(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def model_digest(folder: Path) -> str:
    """A model's content hash as the card should give it, computed here from the file bytes."""
    files = {
        p.name: blake3.blake3(p.read_bytes()).hexdigest() for p in folder.glob("*.safetensors")
    }
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return blake3.blake3(lines.encode()).hexdigest()


def test_missing_tensor_is_refused(llama, tmp_path):
    broken = variant(
        llama[2],
        tmp_path / "broken",
        lambda sd: {k: v for k, v in sd.items() if k != "model.norm.weight"},
    )
    with pytest.raises(MergeError, match=r"'model.norm.weight' is missing from .*broken"):
        merging.merge(linear(llama[1], broken), tmp_path / "out")


def test_shape_mismatch_is_refused(llama, tmp_path):
    def grow(sd):
        sd["model.norm.weight"] = torch.ones(33)
        return sd

    broken = variant(llama[2], tmp_path / "broken", grow)
    with pytest.raises(
        MergeError, match=r"'model.norm.weight' has different shapes.*broken: \(33,\)"
    ):
        merging.merge(linear(llama[1], broken), tmp_path / "out")


def test_architecture_mismatch_is_refused(families, tmp_path):
    with pytest.raises(MergeError, match="different architectures"):
        merging.merge(linear(families["llama"][1], families["qwen2"][1]), tmp_path / "out")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_refused_naming_tensor_and_model(bad, llama, tmp_path):
    def poison(sd):
        sd["model.layers.1.mlp.up_proj.weight"][3, 4] = bad
        return sd

    broken = variant(llama[2], tmp_path / "broken", poison)
    word = "NaN" if bad != bad else "Inf"
    with pytest.raises(
        MergeError, match=rf"'model.layers.1.mlp.up_proj.weight' contains {word} \(input .*broken\)"
    ):
        merging.merge(linear(llama[1], broken), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(f".out{TMP_MARK}*"))


def test_non_finite_input_is_refused_on_the_mergekit_route(llama, tmp_path):
    def poison(sd):
        sd["model.norm.weight"][0] = float("nan")
        return sd

    broken = variant(llama[2], tmp_path / "broken", poison)
    recipe = {
        "merge_method": "model_stock",
        "base_model": str(llama[0]),
        "models": [{"model": str(llama[1])}, {"model": str(broken)}],
    }
    with pytest.raises(MergeError, match=r"'model.norm.weight' contains NaN.*input .*broken"):
        merging.merge(recipe, tmp_path / "out")


def test_non_finite_output_is_refused(llama, tmp_path):
    recipe = linear(llama[1], llama[2])
    recipe["models"][0]["parameters"] = {"weight": 1.0}
    recipe["models"][1]["parameters"] = {"weight": -1.0}  # normalize divides by zero
    with pytest.raises(MergeError, match="contains (NaN|Inf) \\(output of linear"):
        merging.merge(recipe, tmp_path / "out")


def test_inputs_are_untouched_and_output_is_not_overwritten(llama, tmp_path):
    before = [sha_files(m) for m in llama]
    merging.merge(
        {
            "merge_method": "ties",
            "base_model": str(llama[0]),
            "models": [{"model": str(llama[1])}, {"model": str(llama[2])}],
        },
        tmp_path / "out",
    )
    assert [sha_files(m) for m in llama] == before
    with pytest.raises(MergeError, match="already exists"):
        merging.merge(linear(llama[1], llama[2]), tmp_path / "out")
    merging.merge(linear(llama[1], llama[2]), tmp_path / "out", overwrite=True)
    assert "linear" in (tmp_path / "out" / "recipe.yaml").read_text()


def test_provenance_names_sources_hashes_method_and_defaults(llama, tmp_path):
    base, ft1, ft2 = llama
    recipe = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [{"model": str(ft1), "parameters": {"weight": 0.5}}, {"model": str(ft2)}],
    }
    out = merging.merge(recipe, tmp_path / "out")
    card = (out / "README.md").read_text()
    written = (out / "recipe.yaml").read_text()
    for model in llama:
        digest = model_digest(model)
        assert f"`{model}` | `blake3:{digest}`" in card
        assert f"source {model} blake3:{digest}" in written
    assert "ties" in card and "raysoup" in card and "nothing was pruned" in card
    params = yaml.safe_load(written)["parameters"]
    assert params == {
        "normalize": True,
        "rescale": False,
        "int8_mask": False,
        "lambda": 1.0,
        "density": 1.0,
    }
    assert merging.load_recipe(out / "recipe.yaml").models[0].parameters == {"weight": 0.5}


def test_side_files_are_copied_from_the_base(llama, tmp_path):
    out = merging.merge(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(llama[0]),
            "models": [{"model": str(llama[1])}],
        },
        tmp_path / "out",
    )
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (out / name).exists(), name


def test_small_shards_write_an_index_and_load(llama, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merging.merge(linear(llama[1], llama[2], shard_size="20KB"), tmp_path / "out")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 3 and all((out / s).exists() for s in shards)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.model.norm.weight, load_all(out)["model.norm.weight"])


def test_interrupted_merge_leaves_no_complete_looking_output(llama, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(linear(llama[1], llama[2], shard_size="4KB")))
    out = tmp_path / "merged"
    env = {**os.environ, "RAYSOUP_TEST_WRITE_DELAY": "0.2", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "merging.cli", str(recipe), "--out", str(out), "--no-progress"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while (
        not list(tmp_path.glob(f".merged{TMP_MARK}*/model-*.safetensors"))
        and time.time() < deadline
    ):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = list(tmp_path.glob(f".merged{TMP_MARK}*"))
    assert not out.exists() and len(stale) == 1
    assert not (stale[0] / "recipe.yaml").exists()
    merging.merge(recipe, out)  # a rerun cleans up and completes
    assert out.exists() and not list(tmp_path.glob(f".merged{TMP_MARK}*"))


def test_source_hashes_are_right_whatever_the_input_layout(llama, tmp_path):
    """Inputs are hashed while they are read; a differently sharded input is hashed from disk."""
    from transformers import AutoModelForCausalLM

    resharded = tmp_path / "resharded"
    AutoModelForCausalLM.from_pretrained(llama[2]).save_pretrained(resharded, max_shard_size="30KB")
    assert len(list(resharded.glob("*.safetensors"))) > 2
    out = merging.merge(linear(llama[1], resharded), tmp_path / "out")
    card = (out / "README.md").read_text()
    for model in (llama[1], resharded):
        assert f"`{model}` | `blake3:{model_digest(model)}`" in card
