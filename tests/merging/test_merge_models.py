"""One table of methods, run on tiny models of several architectures through the same checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

import merging
from tests.merging.conftest import ARCHS, even_positions, load_all


@dataclass(frozen=True)
class Case:
    method: str
    params: dict = field(default_factory=dict)  # top-level parameters of the ordinary merge
    base: bool = True
    n_models: int = 2
    first: dict | None = None  # parameters that make the result equal the first model
    weighted: bool = True  # whether the method takes per-model weights

    @property
    def id(self) -> str:
        return self.method


CASES = [
    Case("linear", base=False, first={"weight": [1.0, 0.0]}),
    Case("task_arithmetic", first={"weight": [1.0, 0.0]}),
    Case("ties", {"density": 0.5}, first={"weight": [1.0, 0.0], "density": 1.0}),
    Case("dare_linear", {"density": 0.5}, first={"weight": [1.0, 0.0], "density": 1.0}),
    Case("dare_ties", {"density": 0.5}, first={"weight": [1.0, 0.0], "density": 1.0}),
    Case("slerp", {"t": 0.4}, n_models=1, first={"t": 1.0}, weighted=False),
    Case("graft", {"density": 0.2}, first={"weight": [1.0, 0.0], "density": 1.0}),
    # routed through mergekit's own API
    Case(
        "breadcrumbs", {"density": 0.8, "gamma": 0.05}, first={"weight": [1.0, 0.0], "density": 1.0}
    ),
    Case("della", {"density": 0.5, "epsilon": 0.1}, first={"weight": [1.0, 0.0], "density": 1.0}),
    Case("model_stock", weighted=False),
    Case("nuslerp", base=False, first={"weight": [1.0, 0.0]}),
    Case("karcher", base=False, weighted=False),
]


def recipe_for(case: Case, base, models, params=None, weights=None):
    params = dict(case.params if params is None else params)
    per_model = params.pop("weight", None) or weights
    entries = []
    for i, model in enumerate(models):
        entry = {"model": str(model)}
        if case.weighted:
            entry["parameters"] = {"weight": per_model[i] if per_model else 1.0}
        entries.append(entry)
    recipe = {"merge_method": case.method, "models": entries, "parameters": params, "seed": 3}
    if case.base:
        recipe["base_model"] = str(base)
    return recipe


def _inputs(case, family):
    base, ft1, ft2 = family
    return base, [ft1, ft2][: case.n_models]


def _assert_close(merged: dict, expected: dict, atol=1e-6):
    assert merged.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(merged[name], expected[name], atol=atol, rtol=0), name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_merge_keeps_shapes_and_is_finite(case, arch, families, tmp_path):
    base, models = _inputs(case, families[arch])
    out = merging.merge(recipe_for(case, base, models), tmp_path / "out")
    merged, reference = load_all(out), load_all(base)
    assert {k: v.shape for k, v in merged.items()} == {k: v.shape for k, v in reference.items()}
    assert all(torch.isfinite(v).all() for v in merged.values())
    assert (out / "recipe.yaml").exists() and (out / "README.md").exists()
    assert merging.load_recipe(out / "recipe.yaml").merge_method == case.method


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_merging_identical_models_gives_that_model(case, arch, families, clones, tmp_path):
    ft1 = families[arch][1]
    models = (
        [ft1, *clones[arch]][: case.n_models] if not case.base else clones[arch][: case.n_models]
    )
    out = merging.merge(recipe_for(case, ft1, models), tmp_path / "out")
    _assert_close(load_all(out), load_all(ft1), atol=1e-5)


# Merged task vector, by hand, for task vectors d (model a) and e (model b) with weights 1 and 1,
# where e = -2 d at even positions and d / 2 at odd ones (the `opposed` fixture). TIES elects the
# sign of d + e: at even positions that is e's sign (-d), so only e counts; at odd ones both agree.
OPPOSED = [
    # (case, merged task vector at even positions, at odd positions), as multiples of d
    (Case("linear", base=False), -0.5, 0.75),  # (a + b) / 2
    (Case("task_arithmetic"), -1.0, 1.5),  # d + e
    (Case("task_arithmetic", {"normalize": True, "lambda": 0.5}), -0.25, 0.375),
    (Case("ties"), -2.0, 0.75),  # e alone; the mean of d and e
    (Case("ties", {"normalize": False}), -2.0, 1.5),  # e alone; d + e
    (Case("dare_ties"), -2.0, 1.5),  # density 1: no drop, TIES without normalize
    (Case("dare_linear"), -1.0, 1.5),
    (Case("graft", {"density": 1.0}), -1.0, 1.5),
]


@pytest.mark.parametrize(
    "case,even,odd", OPPOSED, ids=[f"{c.method}-{i}" for i, (c, _, _) in enumerate(OPPOSED)]
)
def test_task_vectors_of_opposite_signs_merge_as_computed_by_hand(
    case, even, odd, opposed, tmp_path
):
    base, a, b = opposed
    recipe = recipe_for(case, base, [a, b], weights=[1.0, 1.0])
    start, d = load_all(base), {k: v - load_all(base)[k] for k, v in load_all(a).items()}
    expected = {
        name: start[name] + torch.where(even_positions(delta), even * delta, odd * delta)
        for name, delta in d.items()
    }
    _assert_close(load_all(merging.merge(recipe, tmp_path / "ours")), expected, atol=1e-6)
    if case.method != "graft":  # native only
        theirs = merging.merge({**recipe, "engine": "mergekit"}, tmp_path / "theirs")
        _assert_close(load_all(theirs), expected, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", [c for c in CASES if c.first], ids=lambda c: c.id)
def test_weights_one_zero_give_the_first_model(case, arch, families, tmp_path):
    base, models = _inputs(case, families[arch])
    out = merging.merge(
        recipe_for(case, base, models, params={**case.params, **case.first}), tmp_path / "out"
    )
    _assert_close(load_all(out), load_all(models[0]), atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_merged_model_loads_and_runs(case, families, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, models = _inputs(case, families["llama"])
    out = merging.merge(recipe_for(case, base, models), tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("t1 t2 t3", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 3, 128) and torch.isfinite(logits).all()


PARITY = [
    Case("linear", base=False),
    Case("task_arithmetic", {"lambda": 0.9}),
    Case("task_arithmetic", {"normalize": True}),
    Case("ties", {"density": 0.4}),
    Case("ties", {"density": 0.6, "rescale": True}),
    Case("slerp", {"t": 0.35}, n_models=1, weighted=False),
    Case("dare_ties", {}),  # density 1.0: deterministic
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", PARITY, ids=lambda c: c.id)
def test_native_matches_mergekit(case, arch, families, tmp_path):
    base, models = _inputs(case, families[arch])
    recipe = recipe_for(case, base, models, weights=[0.6, 0.3])
    ours = merging.merge(recipe, tmp_path / "ours")
    theirs = merging.merge({**recipe, "engine": "mergekit"}, tmp_path / "theirs")
    assert "native engine" in (ours / "recipe.yaml").read_text()
    assert "mergekit engine" in (theirs / "recipe.yaml").read_text()
    _assert_close(load_all(ours), load_all(theirs), atol=1e-5)


def test_gradients_and_filters_match_mergekit(llama, tmp_path):
    base, ft1, ft2 = llama
    recipe = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [
            {"model": str(ft1), "parameters": {"weight": [0.2, 0.9], "density": 0.5}},
            {
                "model": str(ft2),
                "parameters": {"weight": [{"filter": "mlp", "value": 0.1}, {"value": 0.7}]},
            },
        ],
        "parameters": {"density": 0.7},
    }
    ours = merging.merge(recipe, tmp_path / "ours")
    theirs = merging.merge({**recipe, "engine": "mergekit"}, tmp_path / "theirs")
    _assert_close(load_all(ours), load_all(theirs), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype, half_families, tmp_path):
    base, ft1, ft2 = half_families[dtype]
    both = {"parameters": {"weight": 1.0}}
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(ft1), **both}, {"model": str(ft2), **both}],
    }
    out = merging.merge(recipe, tmp_path / "out")
    from merging.io import ModelFiles

    files = ModelFiles(out)
    assert {files.info[n].dtype for n in files.names()} == {dtype}
    expected = {
        k: ((load_all(ft1)[k] + load_all(ft2)[k]) / 2).to(dtype).float() for k in files.names()
    }
    _assert_close(load_all(out), expected, atol=0)
    theirs = merging.merge({**recipe, "engine": "mergekit"}, tmp_path / "theirs")
    _assert_close(load_all(out), load_all(theirs), atol=0)


def test_out_dtype_and_mixed_input_dtypes(llama, half_families, tmp_path):
    """Inputs in float32 and bfloat16 are combined in float32; out_dtype picks the output."""
    bf16_ft1 = half_families[torch.bfloat16][1]
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(llama[1])}, {"model": str(bf16_ft1)}],
        "out_dtype": "float16",
    }
    out = merging.merge(recipe, tmp_path / "out")
    from merging.io import ModelFiles

    files = ModelFiles(out)
    assert {files.info[n].dtype for n in files.names()} == {torch.float16}
    assert '"dtype": "float16"' in (out / "config.json").read_text()


def test_slices_recipes_run_through_mergekit(llama, tmp_path):
    base, ft1, _ = llama
    recipe = {
        "merge_method": "passthrough",
        "dtype": "float32",
        "slices": [
            {"sources": [{"model": str(base), "layer_range": [0, 1]}]},
            {"sources": [{"model": str(ft1), "layer_range": [1, 2]}]},
        ],
    }
    assert merging.parse_recipe(recipe).resolved_engine() == "mergekit"
    out = merging.merge(recipe, tmp_path / "out")
    merged, a, b = load_all(out), load_all(base), load_all(ft1)
    assert torch.equal(
        merged["model.layers.0.mlp.up_proj.weight"], a["model.layers.0.mlp.up_proj.weight"]
    )
    assert torch.equal(
        merged["model.layers.1.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"]
    )
    card = (out / "README.md").read_text()
    assert str(base) in card and str(ft1) in card


def test_linear_with_a_base_model_averages_it_in_like_mergekit(llama, tmp_path):
    base, ft1, ft2 = llama
    recipe = {
        "merge_method": "linear",
        "base_model": str(base),
        "parameters": {"weight": 1.0},
        "models": [{"model": str(ft1)}, {"model": str(ft2)}],
    }
    ours = merging.merge(recipe, tmp_path / "ours")
    theirs = merging.merge({**recipe, "engine": "mergekit"}, tmp_path / "theirs")
    _assert_close(load_all(ours), load_all(theirs), atol=1e-6)
    expected = {
        k: (load_all(base)[k] + load_all(ft1)[k] + load_all(ft2)[k]) / 3 for k in load_all(base)
    }
    _assert_close(load_all(ours), expected, atol=1e-6)
