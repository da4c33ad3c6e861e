"""The numpy path equals the torch path bit for bit, and never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import merging
from merging import arrays, native
from merging.errors import MergeError
from merging.methods import array_kernel, get_method, merge_method, unregister

F32_EDGES = np.array(
    [
        0x00000000,
        0x80000000,
        0x00000001,
        0x807FFFFF,
        0x00800000,
        0x3F808000,
        0x3F818000,
        0x3F808001,
        0x3F817FFF,
        0x3F80FFFF,
        0x7F7FFFFF,
        0xFF7FFFFF,
        0x7F7F8000,
        0x7F7F7FFF,
        0x7F800000,
        0xFF800000,
        0x477FEFFF,
        0x477FF000,
        0x33800000,
        0x33000001,
        0x387FC000,
        0x38800000,
        0x00018000,
        0x3EAAAAAB,
    ],
    dtype=np.uint32,
).view(np.float32)  # zeros, subnormals, bfloat16 and float16 ties both ways, overflow to inf, inf


def f32_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    random = (rng.standard_normal(100_000) * 10.0 ** rng.integers(-40, 38, 100_000)).astype(
        np.float32
    )
    return np.concatenate(
        [
            F32_EDGES,
            random,
            rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        ]
    )


@pytest.mark.parametrize("code,dtype", [("BF16", torch.bfloat16), ("F16", torch.float16)])
def test_narrowing_rounds_like_torch(code, dtype):
    values = f32_values()
    values = values[
        np.isfinite(values)
    ]  # merged values are checked finite before they are narrowed
    ours = arrays.from_float32(values, code).view(np.uint16)
    theirs = torch.from_numpy(values).to(dtype).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize(
    "code,dtype", [("BF16", torch.bfloat16), ("F16", torch.float16), ("F32", torch.float32)]
)
def test_widening_equals_torch_for_every_bit_pattern(code, dtype):
    stored = np.arange(2**16, dtype=np.uint16) if code != "F32" else f32_values().view(np.uint32)
    raw = stored.view(arrays.NUMPY[code])
    ours = arrays.to_float32(raw, code)
    theirs = (
        torch.from_numpy(stored.view(np.int16) if code != "F32" else raw)
        .view(dtype)
        .to(torch.float32)
        .numpy()
    )
    number = ~np.isnan(theirs)  # NaN is refused as input; numpy keeps its payload, torch quiets it
    assert np.array_equal(ours[number].view(np.uint32), theirs[number].view(np.uint32))
    assert np.isnan(ours[~number]).all()


@pytest.mark.parametrize(
    "weight,normalize",
    [([1.0, 1.0, 1.0], True), ([1.0, 0.0, 1.0], True), ([1.0, 1.0, 1.0], False), ([1.0], True)],
)
def test_linear_kernel_equals_linear_bit_for_bit(weight, normalize):
    rng = np.random.default_rng(1)
    models = [rng.standard_normal((64, 48)).astype(np.float32) for _ in weight]
    models[0][0, :4] = -0.0  # torch adds to zeros: -0.0 comes out +0.0
    models[-1][0, :2] = -0.0
    spec, params = get_method("linear"), {"weight": weight, "normalize": normalize}
    assert spec.accepts_arrays(params, len(models))
    ours = spec(None, models, params, arrays=True)
    theirs = spec(None, [torch.from_numpy(m) for m in models], params).numpy()
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_linear_kernel_declines_weights_that_need_a_fused_multiply_add():
    assert not get_method("linear").accepts_arrays({"weight": [0.5, 0.5]}, 2)


def test_an_array_kernel_must_take_the_methods_parameters():
    @merge_method("throwaway_scale", base="ignored")
    def scale(models, *, factor: float = 1.0):
        """Scale the first model."""
        return models[0] * factor

    try:
        with pytest.raises(ValueError, match="must take the method's parameters"):
            array_kernel("throwaway_scale")(lambda models, *, factor_: models[0])
    finally:
        unregister("throwaway_scale")


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


def linear_recipe(models, weights, dtype=None) -> dict:
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(models, weights)],
    }
    return recipe | ({"out_dtype": dtype} if dtype else {})


@pytest.mark.parametrize("stored", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("out_dtype", [None, "bfloat16", "float16", "float32"])
def test_array_and_torch_paths_write_the_same_bytes(
    stored, out_dtype, families, half_families, tmp_path, monkeypatch
):
    models = families["llama"] if stored == "float32" else half_families[getattr(torch, stored)]
    recipe = linear_recipe(models, [1.0, 1.0, 0.0], out_dtype)
    used = []
    real = native.runs_on_arrays
    monkeypatch.setattr(native, "runs_on_arrays", lambda *a: used.append(real(*a)) or used[-1])
    on_arrays = merging.merge(recipe, tmp_path / "arrays")
    monkeypatch.setattr(native, "runs_on_arrays", lambda *a: False)
    on_torch = merging.merge(recipe, tmp_path / "torch")
    assert used == [True]
    assert shard_bytes(on_arrays) == shard_bytes(on_torch)
    assert json.loads((on_arrays / "config.json").read_text()) == json.loads(
        (on_torch / "config.json").read_text()
    )


def test_mixed_half_inputs_promote_like_torch(half_families, tmp_path):
    models = [half_families[torch.bfloat16][1], half_families[torch.float16][1]]
    out = merging.merge(linear_recipe(models, [1.0, 1.0]), tmp_path / "out")
    header_len = int.from_bytes((next(out.glob("*.safetensors"))).read_bytes()[:8], "little")
    header = json.loads(next(out.glob("*.safetensors")).read_bytes()[8 : 8 + header_len])
    assert {entry["dtype"] for key, entry in header.items() if key != "__metadata__"} == {"F32"}


def test_non_finite_output_is_refused_on_arrays(llama, tmp_path):
    with pytest.raises(MergeError, match=r"contains NaN \(output of linear"):
        merging.merge(linear_recipe(llama[1:], [0.0, 0.0]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_linear_merge_never_imports_torch(llama, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps(linear_recipe(llama[1:], [1.0, 1.0])))
    script = (
        "import sys, merging.cli; "
        "assert merging.cli.main([sys.argv[1], '--out', sys.argv[2]]) == 0; "
        "print(sorted(m for m in ('torch', 'mergekit', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(recipe), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=Path(merging.__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "README.md").exists()
