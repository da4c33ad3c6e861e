"""Bad inputs to a sweep that `raysoup validate` refuses in seconds, before Ray starts and
without loading weights: each message names the field (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.demo.tiny import save_tiny_model
from tests.conftest import REPO
from tests.faults.conftest import fill, small_sweep, write_sweep


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", seed=0)


def validate(tmp_path: Path, sweep: dict):
    return CliRunner().invoke(app, ["validate", str(write_sweep(tmp_path / "s.yaml", sweep))])


def said(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def refused(result, *phrases: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    for phrase in phrases:
        assert phrase in said(result), result.output


def with_model(tmp_path: Path, path: Path | str, **extra) -> dict:
    sweep = small_sweep(tmp_path, **{"storage": str(tmp_path / "runs"), **extra})
    sweep["model"] = {"path": str(path)}
    return sweep


def broken_copy(model: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(model, copy)
    return copy


def test_a_model_whose_config_is_damaged_is_refused(model, tmp_path, tally):
    broken = broken_copy(model, tmp_path, "garbled")
    (broken / "config.json").write_text('{"model_type": "llama", "hidden')
    refused(validate(tmp_path, with_model(tmp_path, broken)), "model.path:", "cannot be read")
    (broken / "config.json").write_text("{}")
    refused(validate(tmp_path, with_model(tmp_path, broken)), "has no `model_type`")
    tally.bad_input("base model: damaged config.json", 2)


def test_a_model_with_truncated_weights_is_refused(model, tmp_path, tally):
    broken = broken_copy(model, tmp_path, "truncated")
    weights = broken / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    refused(validate(tmp_path, with_model(tmp_path, broken)), "model.path:", "is truncated")
    tally.bad_input("base model: truncated safetensors")


class _Planted:
    def __init__(self, proof: Path) -> None:
        self.proof = proof

    def __reduce__(self):
        return (Path.touch, (self.proof,))


def test_a_model_with_pickle_weights_is_refused_unread(model, tmp_path, tally):
    broken = broken_copy(model, tmp_path, "pickled")
    (broken / "model.safetensors").unlink()
    proof = tmp_path / "unpickled"
    (broken / "pytorch_model.bin").write_bytes(pickle.dumps(_Planted(proof)))
    result = validate(tmp_path, with_model(tmp_path, broken))
    refused(result, "model.path:", "pytorch_model.bin", "never loads")
    assert not proof.exists(), "the pickle was loaded"
    tally.bad_input("base model: pickle weights")


def test_a_hub_name_without_the_hub_names_the_field(tmp_path, monkeypatch, tally):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sweep = with_model(tmp_path, "nobody-here/no-such-model")
    refused(
        validate(tmp_path, sweep),
        "cannot reach the hub for model.path 'nobody-here/no-such-model'; give a local folder",
    )
    tally.bad_input("base model: unreachable hub name")


def test_lora_targets_the_model_lacks_are_refused(model, tmp_path, tally):
    lora = {"method": "lora", "lora": {"target_modules": ["q_proj", "no_such_proj"]}}
    result = validate(tmp_path, with_model(tmp_path, model, finetune=lora))
    refused(result, "finetune.lora.target_modules: 'no_such_proj' is no module of the model")
    assert "q_proj, up_proj, v_proj" in said(result)  # the ones it could adapt
    lora["lora"]["target_modules"] = ["input_layernorm"]
    result = validate(tmp_path, small_sweep(tmp_path, finetune=lora))  # the preset model too
    refused(result, "'input_layernorm' is a LlamaRMSNorm, which LoRA cannot adapt")
    tally.bad_input("lora: target modules the model lacks", 2)


def test_an_empty_data_file_says_so(tmp_path, tally):
    sweep = small_sweep(tmp_path)
    for name, content in (("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("header.csv", "a,b\n")):
        (tmp_path / name).write_text(content)
        sweep["data"]["train"] = str(tmp_path / name)
        refused(validate(tmp_path, sweep), "data.train:", "the file is empty")
        assert "no field" not in validate(tmp_path, sweep).output
    (tmp_path / "empty.jsonl").write_text("")
    sweep = small_sweep(tmp_path)
    sweep["data"]["test"] = str(tmp_path / "empty.jsonl")
    refused(validate(tmp_path, sweep), "data.test:", "the file is empty")
    tally.bad_input("data: empty file", 4)


def test_storage_that_cannot_be_written_is_refused(tmp_path, small_disk, tally):
    disk = small_disk("1m", readonly=True)
    sweep = small_sweep(tmp_path, storage=str(disk / "runs"))
    refused(validate(tmp_path, sweep), f"storage: cannot write to {disk}")
    tally.bad_input("storage: read-only")


def test_storage_without_room_for_a_checkpoint_is_a_warning(model, tmp_path, small_disk, tally):
    disk = small_disk("256k")
    fill(disk, leave=8 * 1024)
    result = validate(tmp_path, with_model(tmp_path, model, storage=str(disk)))
    assert result.exit_code == 0, result.output
    assert f"warning storage: {disk} has" in said(result)
    assert "one checkpoint of this model takes about" in said(result)
    tally.bad_input("storage: no room for a checkpoint")


def test_validate_of_a_full_fine_tune_loads_no_torch(model, tmp_path):
    """The model checks read headers and JSON only: validating a full fine-tune of a local
    model folder never imports torch (only a LoRA sweep that lists its targets does)."""
    path = write_sweep(tmp_path / "s.yaml", with_model(tmp_path, model))
    code = (
        "import sys; from sweeps import load_sweep; from engine.preflight import check; "
        f"check(load_sweep({str(path)!r})); print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr
    assert json.loads((model / "config.json").read_text())  # the input is untouched
