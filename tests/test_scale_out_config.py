"""Worker-group and DeepSpeed settings, without Ray: what a sweep may ask for, what DeepSpeed
would refuse (caught at validate, naming the field), the configuration trials start with, and
how many groups a cluster holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.core.errors import RunError
from engine.preflight import check
from engine.train.parallel import deepspeed_config
from engine.train.workers import group_capacity
from sweeps import SweepError, load_sweep, parse_sweep
from tests.test_submit import free_port
from tests.test_sweep_config import sweep_dict

BAD = [
    ("no workers", {"resources__workers": 0}, "resources.workers: Input should be greater than 0"),
    ("bad placement", {"resources__placement": "anywhere"}, "resources.placement: "),
    ("stage 4", {"deepspeed": {"stage": 4}}, "deepspeed.stage: "),
    (
        "param offload on stage 2",
        {"deepspeed": {"stage": 2, "offload_params": True}},
        "offload_params needs stage 3",
    ),
    (
        "zero-3 lora",
        {"deepspeed": {"stage": 3}, "finetune__method": {"grid": ["full", "lora"]}},
        "deepspeed.stage: 3 with finetune.method lora",
    ),
    (
        "raw batch size differs",
        {"deepspeed": {"config": {"train_micro_batch_size_per_gpu": 3}}},
        "deepspeed.config.train_micro_batch_size_per_gpu: 3 differs",
    ),
    (
        "raw accumulation with a searched one",
        {
            "deepspeed": {"config": {"gradient_accumulation_steps": 2}},
            "train__grad_accum": {"grid": [1, 2]},
        },
        "deepspeed.config.gradient_accumulation_steps",
    ),
    ("unknown key", {"deepspeed": {"stages": 2}}, "deepspeed.stages: unknown key"),
]


@pytest.mark.parametrize("name,overrides,message", BAD, ids=[b[0] for b in BAD])
def test_bad_worker_group_settings_name_the_field(name, overrides, message):
    with pytest.raises(SweepError) as err:
        parse_sweep(sweep_dict(**overrides))
    assert message in str(err.value)


PREFLIGHT = [
    (
        "fp16 on cpu workers",
        {"resources__workers": 2, "train__precision": "fp16"},
        "train.precision: fp16 needs a GPU (set resources.gpus_per_worker)",
    ),
    (
        "zero key deepspeed refuses",
        {"deepspeed": {"config": {"zero_optimization": {"overlap_com": True}}}},
        "deepspeed.config.zero_optimization.overlap_com",
    ),
    (
        "zero value deepspeed refuses",
        {"deepspeed": {"config": {"zero_optimization": {"reduce_bucket_size": "lots"}}}},
        "deepspeed.config.zero_optimization.reduce_bucket_size",
    ),
    (
        "flash attention without its package",
        {"model": {"preset": "tiny-random", "attn_implementation": "flash_attention_2"}},
        "model.attn_implementation: flash_attention_2 needs the flash-attn package",
    ),
    (
        "optimizer offload without gpus",
        {"deepspeed": {"offload_optimizer": True}},
        "deepspeed.offload_optimizer: needs GPUs",
    ),
]


@pytest.mark.parametrize("name,overrides,message", PREFLIGHT, ids=[p[0] for p in PREFLIGHT])
def test_settings_deepspeed_would_refuse_fail_validate(name, overrides, message):
    with pytest.raises(SweepError) as err:
        check(parse_sweep(sweep_dict(**overrides)))
    assert message in str(err.value)


def test_a_good_zero_sweep_passes_validate_on_cpu():
    sweep = parse_sweep(
        sweep_dict(
            deepspeed={
                "stage": 3,
                "config": {"zero_optimization": {"stage3_max_live_parameters": 1}},
            },
            resources={"workers": 2, "cpus_per_worker": 0.5},
        )
    )
    check(sweep)
    assert sweep.uses_worker_group()
    assert not parse_sweep(sweep_dict()).uses_worker_group()


# What a DeepSpeed worker does before `deepspeed.initialize`, in a process of its own (the
# process group would stay in this one): DeepSpeed starts its communication backend on the
# CPU, as in a worker group, and builds nothing into the extensions folder.
STARTS_DEEPSPEED = """
import deepspeed.comm
from engine.train.parallel import _without_shared_memory_all_reduce
_without_shared_memory_all_reduce()
deepspeed.comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
print("op:", deepspeed.comm.comm.cdb.shm_comm_op)
"""


def test_a_deepspeed_group_on_cpu_compiles_no_op(tmp_path):
    """DeepSpeed compiles a shared-memory all-reduce (52 s on 2 cores) when its backend starts
    on a CPU, unless told not to; training never calls it."""
    extensions = tmp_path / "torch_extensions"
    env = os.environ | {
        "TORCH_EXTENSIONS_DIR": str(extensions),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-c", STARTS_DEEPSPEED], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "op: None" in done.stdout, done.stdout
    assert not extensions.exists() or not any(extensions.rglob("*.so"))


def test_deepspeed_config_takes_the_train_section_and_the_raw_keys_over_it():
    sweep = parse_sweep(
        sweep_dict(
            train__batch_size=4,
            train__grad_accum=2,
            train__precision="bf16",
            train__max_grad_norm=0.5,
            deepspeed={
                "stage": 3,
                "offload_params": True,
                "config": {
                    "zero_optimization": {"stage3_max_live_parameters": 10},
                    "wall_clock_breakdown": True,
                },
            },
        )
    )
    config = deepspeed_config(sweep)
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    zero = config["zero_optimization"]
    # the raw section is merged key by key: raysoup's own keys stay beside it
    assert zero["stage"] == 3 and zero["stage3_max_live_parameters"] == 10
    assert zero["offload_param"]["device"] == "cpu" and "offload_optimizer" not in zero
    assert config["wall_clock_breakdown"] is True


def test_a_raw_config_file_is_read_into_the_sweep_relative_to_it(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"reduce_scatter": False}}))
    sweep_file = tmp_path / "s.yaml"
    base = sweep_dict(deepspeed={"stage": 2, "config": "ds.json"})
    sweep_file.write_text(json.dumps(base))  # JSON is YAML
    sweep = load_sweep(sweep_file)
    assert sweep.deepspeed.config == {"zero_optimization": {"reduce_scatter": False}}
    assert deepspeed_config(sweep)["zero_optimization"]["reduce_scatter"] is False

    (tmp_path / "ds.json").write_text("[1, 2]")
    with pytest.raises(SweepError, match="holds a JSON list, not an object"):
        load_sweep(sweep_file)
    (tmp_path / "ds.json").unlink()
    with pytest.raises(SweepError, match=r"deepspeed.config: cannot read .*ds.json"):
        load_sweep(sweep_file)


def groups(cluster: dict, **resources) -> int:
    return group_capacity(parse_sweep(sweep_dict(resources=resources)), cluster)


def test_group_capacity_counts_whole_groups_with_their_trials_own_share():
    assert groups({"CPU": 2.0}, workers=2, cpus_per_worker=0.5) == 1  # 1.01 CPUs a group
    assert groups({"CPU": 4.0}, workers=2, cpus_per_worker=1) == 1  # 2.01: not two in 4
    assert groups({"CPU": 64.0, "GPU": 8.0}, workers=4, cpus_per_worker=2, gpus_per_worker=1) == 2
    assert groups({"CPU": 64.0, "GPU": 8.0}, workers=2, gpus_per_trial=1) == 4


def test_a_group_larger_than_the_cluster_is_refused_with_what_it_needs():
    with pytest.raises(RunError, match=r"needs 4 CPU, 4 GPU \(4 workers\).*has \(16 CPU, 2 GPU\)"):
        groups({"CPU": 16.0, "GPU": 2.0}, workers=4, gpus_per_worker=1)
