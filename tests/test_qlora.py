"""QLoRA on CPU (bitsandbytes' CPU backend): adapters over a base quantised to 4 bits, their
checkpoints, exact resume, a sweep whose merges bake them into the unquantised base, and
validation."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

import engine
from engine.core.models import load_for_training
from engine.preflight import check
from engine.train.loop import train
from sweeps import SweepError, parse_sweep
from tests.conftest import DEMO_DATA
from tests.test_sweep_config import sweep_dict
from tests.test_train_loop import RecordingSession, _spec, data_dir, model_path  # noqa: F401

bnb = pytest.importorskip("bitsandbytes", reason="qlora needs bitsandbytes (raysoup[qlora])")


def test_the_base_is_4bit_and_only_the_adapters_train(model_path):  # noqa: F811
    finetune = parse_sweep({**sweep_dict(), "finetune": {"method": "qlora"}}).finetune
    model = load_for_training(model_path, finetune, torch.device("cpu"))
    linears = [m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears and all(m.weight.quant_state.quant_type == "nf4" for m in linears)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)


def test_a_qlora_trial_saves_its_adapter_and_resumes_exactly(
    model_path,  # noqa: F811
    data_dir,  # noqa: F811
    tmp_path,
):
    straight = RecordingSession(tmp_path / "a")
    final = train(_spec(model_path, data_dir, method="qlora"), straight)
    last = straight.checkpoints[-1]
    assert (last / "adapter_model.safetensors").is_file() and not (
        last / "model.safetensors"
    ).exists()
    adapter = load_file(last / "adapter_model.safetensors")
    assert any("lora_B" in n and v.abs().max() > 0 for n, v in adapter.items())  # B starts at 0
    assert final["eval_loss"] < straight.reports[0]["eval_loss"]
    halfway = next(c for c in straight.checkpoints if c.name == "step3")
    again = train(
        _spec(model_path, data_dir, method="qlora"),
        RecordingSession(tmp_path / "b", restore=halfway),
    )
    assert again["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-5)


def test_a_qlora_sweep_merges_and_evaluates_its_adapters(ray_local, tmp_path):
    sweep = {
        "name": "qlora",
        "model": {"preset": "tiny-random"},
        "finetune": {"method": "qlora", "lora": {"r": 4, "alpha": 8}},
        "data": {
            "train": str(DEMO_DATA / "add" / "train.jsonl"),
            "eval": str(DEMO_DATA / "add" / "eval.jsonl"),
            "format": "prompt_completion",
        },
        "train": {"max_steps": 4, "batch_size": 4, "seq_len": 24, "eval_every": 2, "lr": 3e-3},
        "checkpoint": {"every": 2},
        "merge": [{"type": "checkpoint_average"}],
    }
    result = engine.run(parse_sweep(sweep), storage=str(tmp_path), progress=False)
    assert list(result.trials["status"]) == ["done"], result.trials["error"].tolist()
    merge = result.merges.iloc[0]
    assert merge["status"] == "done", merge["error"]
    assert set(result.evals["candidate"]) >= {result.trials["name"].iloc[0], merge["candidate"]}
    assert result.evals["value"].notna().all()


def test_qlora_without_bitsandbytes_is_refused_at_validate(monkeypatch):
    # The package made absent for this test: importing it then raises ImportError.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(SweepError, match="finetune.method: qlora needs the bitsandbytes package"):
        check(parse_sweep({**sweep_dict(), "finetune": {"method": "qlora"}}))


def test_qlora_on_a_worker_group_is_refused():
    with pytest.raises(SweepError, match="finetune.method: qlora trains in one process"):
        parse_sweep({**sweep_dict(), "finetune": {"method": "qlora"}, "resources": {"workers": 2}})
