"""LoRA: adapter-space merges (stack, SVD, PEFT's types) and baking into full weights."""

from __future__ import annotations

import json

import pytest
import torch

from merging import MergeError
from merging.bake import bake_adapter
from merging.lora import Adapter, merge_adapters
from tests.merging.conftest import load_all


def _peft_merged(base, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    return {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}


def test_stack_equals_the_weighted_sum_of_deltas(lora_adapters, tmp_path):
    weights = [0.7, -0.4]
    out = merge_adapters(lora_adapters, tmp_path / "stacked", weights=weights, method="stack")
    merged, inputs = Adapter(out), [Adapter(a) for a in lora_adapters]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 6
    for module in merged.modules:
        expected = sum(w * a.delta(module) for w, a in zip(weights, inputs))
        assert torch.allclose(merged.delta(module), expected, atol=1e-6)


def test_stacked_adapter_loads_in_peft_and_matches(llama, lora_adapters, tmp_path):
    out = merge_adapters(lora_adapters, tmp_path / "stacked", weights=[0.5, 0.5])
    merged = _peft_merged(llama[0], out)
    base = load_all(llama[0])
    inputs = [Adapter(a) for a in lora_adapters]
    name = "model.layers.1.self_attn.q_proj.weight"
    module = "base_model.model.model.layers.1.self_attn.q_proj"
    expected = base[name] + sum(0.5 * a.delta(module) for a in inputs)
    assert torch.allclose(merged[name], expected, atol=1e-6)


def test_svd_is_exact_at_full_rank_and_best_below(lora_adapters, tmp_path):
    inputs = [Adapter(a) for a in lora_adapters]
    full = Adapter(merge_adapters(lora_adapters, tmp_path / "full", method="svd", rank=6))
    low = Adapter(merge_adapters(lora_adapters, tmp_path / "low", method="svd", rank=2))
    for module in full.modules:
        exact = sum(a.delta(module) for a in inputs)
        assert torch.allclose(full.delta(module), exact, atol=1e-5)
        s = torch.linalg.svdvals(exact)
        assert torch.isclose(torch.linalg.norm(low.delta(module) - exact), s[2:].norm(), rtol=1e-3)


@pytest.mark.parametrize(
    "method,density", [("linear", None), ("cat", None), ("ties", 0.5), ("dare_linear", 0.5)]
)
def test_peft_combination_types_run_through_peft(method, density, llama, lora_adapters, tmp_path):
    """PEFT's `add_weighted_adapter` types, checked by hand where they are exact: `cat` gives
    the weighted sum of the updates; `linear` scales A and B each by sum_i sqrt(w_i) (same
    adapter twice), so its update is (sum_i sqrt(w_i))^2 times the adapter's. Pruning types keep
    about `density` of each factor. The folder written is the adapter PEFT applies."""
    adapters = lora_adapters if method == "cat" else [lora_adapters[0], lora_adapters[0]]
    weights = [0.7, -0.4] if method == "cat" else [0.5, 0.5]
    torch.manual_seed(0)  # PEFT's DARE draws from the global generator
    out = merge_adapters(
        adapters,
        tmp_path / method,
        weights=weights,
        method=method,
        density=density,
        base_model=llama[0],
    )
    assert (out / "adapter_model.safetensors").exists() and (out / "README.md").exists()
    merged, base = _peft_merged(llama[0], out), load_all(llama[0])
    result, inputs = Adapter(out), [Adapter(a) for a in adapters]
    assert set(result.modules) == set(inputs[0].modules)
    kept = []
    for module in result.modules:
        name = module.removeprefix("base_model.model.") + ".weight"
        assert torch.allclose(merged[name], base[name] + result.delta(module), atol=1e-6)
        deltas = [a.delta(module) for a in inputs]
        if method == "cat":
            expected = sum(w * d for w, d in zip(weights, deltas))
            assert torch.allclose(result.delta(module), expected, atol=1e-6), module
        elif method == "linear":
            factor = sum(w**0.5 for w in weights) ** 2
            assert torch.allclose(result.delta(module), factor * deltas[0], atol=1e-6), module
        else:
            a, b, _ = result.pair(module)
            kept += [float((a != 0).float().mean()), float((b != 0).float().mean())]
    if density:  # TIES keeps the same top half of both copies; DARE's two draws keep ~3/4
        share = sum(kept) / len(kept)
        assert share == pytest.approx(density if method == "ties" else 0.75, abs=0.1)


def test_bake_equals_peft_merge_and_unload(llama, lora_adapters, tmp_path):
    out = bake_adapter(llama[0], lora_adapters[0], tmp_path / "baked")
    ours, theirs = load_all(out), _peft_merged(llama[0], lora_adapters[0])
    for name, value in ours.items():
        assert torch.allclose(value, theirs[name], atol=1e-6), name
    assert (out / "tokenizer.json").exists() and "blake3:" in (out / "recipe.yaml").read_text()


def test_bake_to_bfloat16_and_loads(llama, lora_adapters, tmp_path):
    """The bfloat16 bake is the float32 bake rounded once, and loads as bfloat16."""
    from transformers import AutoModelForCausalLM

    from merging.io import ModelFiles

    out = bake_adapter(llama[0], lora_adapters[1], tmp_path / "baked", out_dtype="bfloat16")
    full = load_all(bake_adapter(llama[0], lora_adapters[1], tmp_path / "full"))
    files = ModelFiles(out)
    assert {files.info[name].dtype for name in files.names()} == {torch.bfloat16}
    changed = 0
    for name, value in full.items():
        assert torch.equal(files.load(name), value.to(torch.bfloat16)), name
        changed += not torch.equal(value, load_all(llama[0])[name])
    assert changed == 2 * 3  # q_proj, v_proj and down_proj of both layers
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.model.norm.weight.dtype == torch.bfloat16


def test_adapters_on_different_modules_are_refused(llama, lora_adapters, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    other = get_peft_model(
        AutoModelForCausalLM.from_pretrained(llama[0]), LoraConfig(r=2, target_modules=["k_proj"])
    )
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(MergeError, match="different modules"):
        merge_adapters([lora_adapters[0], tmp_path / "other"], tmp_path / "out")
    with pytest.raises(MergeError, match="method: unknown adapter merge 'avg'"):
        merge_adapters(lora_adapters, tmp_path / "out", method="avg")


def test_an_adapter_in_a_merge_recipe_says_to_bake_it_and_bake_does(llama, lora_adapters, tmp_path):
    """`raysoup merge` refuses an adapter folder with the way out; `raysoup bake` is that way:
    its output equals `bake_adapter`'s and merges like any model."""
    from typer.testing import CliRunner

    from engine.cli import app

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {llama[0]}\n  - model: {lora_adapters[0]}\n"
    )
    refused = CliRunner().invoke(app, ["merge", str(recipe), "--out", str(tmp_path / "m")])
    assert refused.exit_code == 2
    assert "this is a LoRA adapter, not a model; bake it" in refused.output
    assert not (tmp_path / "m").exists()
    baked = CliRunner().invoke(
        app, ["bake", str(lora_adapters[0]), "--base", str(llama[0]), "--out", str(tmp_path / "b")]
    )
    assert baked.exit_code == 0, baked.output
    expected = load_all(bake_adapter(llama[0], lora_adapters[0], tmp_path / "direct"))
    ours = load_all(tmp_path / "b")
    assert ours.keys() == expected.keys()
    assert all(torch.equal(ours[k], expected[k]) for k in ours)
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {llama[0]}\n  - model: {tmp_path / 'b'}\n"
    )
    merged = CliRunner().invoke(app, ["merge", str(recipe), "--out", str(tmp_path / "m")])
    assert merged.exit_code == 0, merged.output
