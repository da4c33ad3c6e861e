"""Half fine-tuning on its own (no Ray): frozen parameters stay bit-identical and the rest train,
rounds draw a new half, a resumed trial freezes what the uninterrupted one froze, settings."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from engine.train.hft import blocks, selection
from engine.train.loop import train
from sweeps import SweepError, parse_sweep
from sweeps.config import HftConfig
from tests.test_sweep_config import sweep_dict
from tests.test_train_loop import RecordingSession, _spec, data_dir, model_path  # noqa: F401


def hft_spec(path, data, **hft):
    spec = _spec(path, data, method="hft", weight_decay=0.1)  # frozen: no decay
    finetune = spec.sweep.finetune.model_copy(update={"hft": HftConfig(**hft)})
    return dataclasses.replace(spec, sweep=spec.sweep.model_copy(update={"finetune": finetune}))


def changed(path, checkpoint) -> set[str]:
    """The names of the parameters whose values differ from the base model's."""
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tuned = load_file(checkpoint / "model.safetensors")
    return {n for n, p in base.named_parameters() if not torch.equal(p, tuned[n])}


@pytest.fixture(scope="module")
def base(model_path):  # noqa: F811
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)


def test_frozen_parameters_stay_bit_identical_and_the_rest_train(
    model_path,  # noqa: F811
    data_dir,  # noqa: F811
    base,
    tmp_path,
):
    session = RecordingSession(tmp_path)
    last = train(hft_spec(model_path, data_dir, fraction=0.5), session)
    trained = selection(base, HftConfig(fraction=0.5), seed=0, round_=0)
    assert changed(model_path, session.checkpoints[-1]) == trained
    sizes = {n: p.numel() for n, p in base.named_parameters()}
    assert last["trainable_share"] == round(sum(sizes[n] for n in trained) / sum(sizes.values()), 4)
    # about half of every block, and nothing outside the blocks
    path, layers = blocks(base)
    for i, layer in enumerate(layers):
        mine = {f"{path}.{i}.{n}": p.numel() for n, p in layer.named_parameters()}
        share = sum(v for n, v in mine.items() if n in trained) / sum(mine.values())
        assert 0.5 <= share < 0.9, (i, share)
    assert all(n.startswith(f"{path}.") for n in trained)


def test_rounds_draw_a_new_half_and_a_resumed_trial_freezes_the_same(
    model_path,  # noqa: F811
    data_dir,  # noqa: F811
    base,
    tmp_path,
):
    cfg = HftConfig(fraction=0.5, rounds=2)  # 6 steps: rounds start at steps 0 and 3
    first, second = (selection(base, cfg, seed=0, round_=r) for r in (0, 1))
    assert first != second
    straight = RecordingSession(tmp_path / "a")
    final = train(hft_spec(model_path, data_dir, fraction=0.5, rounds=2), straight)
    assert changed(model_path, straight.checkpoints[0]) == first  # step 3: round 0 only
    assert changed(model_path, straight.checkpoints[-1]) == first | second
    halfway = next(c for c in straight.checkpoints if c.name == "step3")
    resumed = RecordingSession(tmp_path / "b", restore=halfway)
    again = train(hft_spec(model_path, data_dir, fraction=0.5, rounds=2), resumed)
    assert again["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-6)
    ours = load_file(resumed.checkpoints[-1] / "model.safetensors")
    theirs = load_file(straight.checkpoints[-1] / "model.safetensors")
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)


def test_the_layers_strategy_trains_whole_blocks(base):
    path, layers = blocks(base)
    trained = selection(base, HftConfig(fraction=0.5, strategy="layers"), seed=3, round_=0)
    whole = {int(n[len(path) + 1 :].split(".")[0]) for n in trained}
    assert len(whole) == round(0.5 * len(layers))
    for i in whole:
        assert {f"{path}.{i}.{n}" for n, _ in layers[i].named_parameters()} <= trained


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"finetune": {"method": "hft", "hft": {"fraction": 1.0}}}, "finetune.hft.fraction"),
        ({"finetune": {"method": "hft", "hft": {"fraction": 0}}}, "finetune.hft.fraction"),
        ({"finetune": {"method": "hft", "hft": {"strategy": "heads"}}}, "finetune.hft.strategy"),
        (
            {"finetune": {"method": {"grid": ["full", "hft"]}}, "resources": {"workers": 2}},
            "finetune.method: hft trains in one process",
        ),
    ],
)
def test_bad_hft_settings_name_the_field(overrides, message):
    with pytest.raises(SweepError) as err:
        parse_sweep({**sweep_dict(), **overrides})
    assert message in str(err.value)
