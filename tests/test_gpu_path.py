"""The GPU path, on one CUDA GPU (skipped without one): a one-process bf16 trial and an fp16
trial with loss scaling, a QLoRA trial, a one-worker DeepSpeed ZeRO-2 bf16 group with optimizer
offload, each through the whole pipeline, reporting throughput and GPU memory."""

from __future__ import annotations

import math

import pytest

import engine
from sweeps import parse_sweep
from tests.conftest import DEMO_DATA

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("ray_local")]


def gpu_sweep(name: str, **extra) -> dict:
    sweep = {
        "name": name,
        "model": {"preset": "tiny-random"},
        "data": {
            "train": str(DEMO_DATA / "add" / "train.jsonl"),
            "eval": str(DEMO_DATA / "add" / "eval.jsonl"),
            "format": "prompt_completion",
        },
        "train": {"lr": 3e-3, "max_steps": 6, "batch_size": 8, "seq_len": 24, "eval_every": 3},
        "data_scale": [64],
        "seeds": [0],
        "resources": {"gpus_per_trial": 1, "max_failures": 0},
    }
    sweep.update(extra)
    return sweep


def check_trials(result) -> None:
    trials = result.trials
    assert set(trials["status"]) == {"done"}, trials["error"].tolist()
    assert all(math.isfinite(v) for v in trials["eval_loss"])
    assert (trials["tokens_per_s"] > 0).all()
    assert (trials["gpu_peak_mb"] > 0).all()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_one_process_trial_on_the_gpu(precision, tmp_path):
    sweep = gpu_sweep(
        f"gpu-{precision}",
        train={**gpu_sweep("x")["train"], "precision": precision, "gradient_checkpointing": True},
    )
    check_trials(engine.run(parse_sweep(sweep), storage=str(tmp_path), progress=False))


def test_qlora_on_the_gpu(tmp_path):
    sweep = gpu_sweep(
        "gpu-qlora",
        finetune={"method": "qlora", "lora": {"r": 8, "alpha": 16}},
        train={**gpu_sweep("x")["train"], "precision": "bf16"},
    )
    check_trials(engine.run(parse_sweep(sweep), storage=str(tmp_path), progress=False))


def test_deepspeed_zero2_with_optimizer_offload_on_the_gpu(tmp_path):
    sweep = gpu_sweep(
        "gpu-zero2",
        train={**gpu_sweep("x")["train"], "precision": "bf16"},
        deepspeed={"stage": 2, "offload_optimizer": True},
        resources={"workers": 1, "gpus_per_worker": 1, "max_failures": 0},
    )
    check_trials(engine.run(parse_sweep(sweep), storage=str(tmp_path), progress=False))
