"""The training loop on its own (no Ray): resume exactness, schedules, precision, LoRA."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.demo.tiny import save_tiny_model
from engine.prepare.stage import tokenize_batch
from engine.train.loop import TrialSpec, train
from sweeps import parse_sweep
from tests.conftest import DEMO_DATA


class RecordingSession:
    """The loop's `Session` for tests: keeps every report and copies every checkpoint."""

    def __init__(self, root: Path, restore: Path | None = None) -> None:
        self.root, self.restore, self.reports, self.checkpoints = root, restore, [], []

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            kept = self.root / f"step{metrics['step']}"
            shutil.copytree(checkpoint, kept)
            self.checkpoints.append(kept)

    def restore_dir(self) -> Path | None:
        return self.restore


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("model"), arch="llama", seed=0))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, model_path) -> Path:
    """Prepared splits written without Ray, through the same tokenizer function."""
    import json

    sweep = parse_sweep(_sweep_dict())
    root = tmp_path_factory.mktemp("data")
    for split, name, n in (("train", "train.jsonl", 64), ("eval", "eval.jsonl", 16)):
        rows = [json.loads(line) for line in (DEMO_DATA / "add" / name).read_text().splitlines()]
        table = pa.Table.from_pylist(
            [{k: r[k] for k in ("prompt", "completion")} for r in rows[:n]]
        )
        (root / split).mkdir()
        pq.write_table(
            tokenize_batch(table, sweep.data, model_path, False), root / split / "part.parquet"
        )
    return root


def _sweep_dict(**train) -> dict:
    return {
        "name": "loop",
        "model": {"preset": "tiny-random"},
        "data": {"train": str(DEMO_DATA / "add" / "train.jsonl"), "format": "prompt_completion"},
        "train": {
            "lr": 3e-3,
            "max_steps": 6,
            "batch_size": 4,
            "seq_len": 24,
            "eval_every": 3,
            "warmup_steps": 2,
            **train,
        },
        "checkpoint": {"every": 3},
    }


def _spec(model_path, data_dir, size=None, seed=0, method="full", **train) -> TrialSpec:
    sweep = parse_sweep({**_sweep_dict(**train), "finetune": {"method": method}})
    return TrialSpec(
        sweep=sweep, model_path=model_path, data_dir=data_dir, data_size=size, seed=seed
    )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resuming_from_a_checkpoint_gives_the_same_result_as_not_stopping(
    method, model_path, data_dir, tmp_path
):
    straight = RecordingSession(tmp_path / "a")
    final = train(_spec(model_path, data_dir, method=method), straight)
    halfway = next(c for c in straight.checkpoints if c.name == "step3")
    resumed = RecordingSession(tmp_path / "b", restore=halfway)
    again = train(_spec(model_path, data_dir, method=method), resumed)
    assert [r["step"] for r in resumed.reports] == [6]
    assert again["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-5)


def test_reports_follow_eval_every_and_training_lowers_the_loss(model_path, data_dir, tmp_path):
    session = RecordingSession(tmp_path)
    train(_spec(model_path, data_dir, max_steps=12, eval_every=4), session)
    assert [r["step"] for r in session.reports] == [3, 4, 6, 8, 9, 12]
    assert session.reports[-1]["eval_loss"] < session.reports[0]["eval_loss"]
    assert all(r["total_steps"] == 12 for r in session.reports)


def test_epochs_set_the_step_count_from_the_data_size(model_path, data_dir, tmp_path):
    session = RecordingSession(tmp_path)
    train(
        _spec(
            model_path, data_dir, size=40, max_steps=None, epochs=0.5, batch_size=4, grad_accum=2
        ),
        session,
    )
    assert session.reports[-1]["step"] == 3  # ceil(0.5 * 40 / (4 * 2))
    assert session.reports[-1]["data_size"] == 40


def test_bf16_autocast_trains_on_cpu_as_fp32_does(model_path, data_dir, tmp_path):
    """bf16 autocast is really on (the loss is not fp32's to the bit), and it trains as fp32
    does: its difference from fp32 is small next to what training changed."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.core.batches import mean_loss
    from engine.core.models import load_tokenizer
    from engine.prepare.splits import load_split

    runs = {
        precision: train(
            _spec(model_path, data_dir, precision=precision, max_steps=3),
            RecordingSession(tmp_path / precision),
        )["eval_loss"]
        for precision in ("bf16", "fp32")
    }
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    cfg = _spec(model_path, data_dir).sweep.train
    pad = load_tokenizer(model_path).pad_token_id
    untrained = mean_loss(model, load_split(data_dir, "eval"), cfg, pad, torch.device("cpu"))
    assert runs["bf16"] != runs["fp32"]
    assert runs["fp32"] < untrained
    assert abs(runs["bf16"] - runs["fp32"]) < 0.1 * (untrained - runs["fp32"])


def test_different_seeds_give_different_batches(model_path, data_dir, tmp_path):
    first = train(_spec(model_path, data_dir, seed=0), RecordingSession(tmp_path / "a"))
    second = train(_spec(model_path, data_dir, seed=1), RecordingSession(tmp_path / "b"))
    assert first["eval_loss"] != second["eval_loss"]


def test_tokens_seen_counts_every_real_token_once_per_epoch(model_path, data_dir, tmp_path):
    from engine.prepare.splits import load_split

    result = train(
        _spec(model_path, data_dir, size=40, max_steps=None, epochs=1, batch_size=4, seq_len=24),
        RecordingSession(tmp_path),
    )
    subset = load_split(data_dir, "train", 40)["input_ids"]
    assert result["examples_seen"] == 40
    assert result["tokens_seen"] == sum(min(len(ids), 24) for ids in subset)


class StoppedAfter(RecordingSession):
    """A session whose trial is stopped from outside once it reported `step`."""

    def __init__(self, root: Path, step: int) -> None:
        super().__init__(root)
        self.step = step

    def stopping(self) -> bool:
        return any(r["step"] >= self.step for r in self.reports)


def test_a_trial_stopped_from_outside_ends_before_its_next_step(model_path, data_dir, tmp_path):
    session = StoppedAfter(tmp_path, step=3)
    last = train(_spec(model_path, data_dir, eval_every=1), session)
    assert [r["step"] for r in session.reports] == [1, 2, 3] and last["step"] == 3
    assert [c.name for c in session.checkpoints] == ["step3"]


def test_a_resumed_trial_reports_the_same_tokens_seen(model_path, data_dir, tmp_path):
    straight = RecordingSession(tmp_path / "a")
    final = train(_spec(model_path, data_dir), straight)
    halfway = next(c for c in straight.checkpoints if c.name == "step3")
    again = train(_spec(model_path, data_dir), RecordingSession(tmp_path / "b", restore=halfway))
    assert again["tokens_seen"] == final["tokens_seen"] > 0


def test_gradient_checkpointing_and_eager_attention_train_the_same_weights(
    model_path, data_dir, tmp_path
):
    """Recomputing activations, or another attention kernel, changes memory and speed only."""
    plain = train(_spec(model_path, data_dir), RecordingSession(tmp_path / "a"))
    recomputed = train(
        _spec(model_path, data_dir, gradient_checkpointing=True), RecordingSession(tmp_path / "b")
    )
    sweep = _sweep_dict()
    sweep["model"] = {"preset": "tiny-random", "attn_implementation": "eager"}
    spec = _spec(model_path, data_dir)
    eager = train(
        TrialSpec(
            sweep=parse_sweep(sweep),
            model_path=model_path,
            data_dir=data_dir,
            data_size=None,
            seed=0,
        ),
        RecordingSession(tmp_path / "c"),
    )
    assert recomputed["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-5)
    assert eager["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-4)
    assert spec.sweep.model.attn_implementation == "sdpa"
    assert plain["tokens_per_s"] > 0 and "gpu_peak_mb" not in plain  # no GPU here


def test_fp16_loss_scaling_is_saved_and_resumed(model_path, data_dir, tmp_path):
    """fp16 (a GPU setting: validate refuses it on CPU) trains through the loss scaler, whose
    state is part of the checkpoint, so a resumed trial ends where an uninterrupted one does.
    The loop is driven directly here so the scaler's path runs without a GPU."""
    import torch

    straight = RecordingSession(tmp_path / "a")
    final = train(_spec(model_path, data_dir, precision="fp16"), straight)
    halfway = next(c for c in straight.checkpoints if c.name == "step3")
    state = torch.load(halfway / "trainer_state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0
    again = train(
        _spec(model_path, data_dir, precision="fp16"),
        RecordingSession(tmp_path / "b", restore=halfway),
    )
    assert again["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-5)
    assert final["eval_loss"] < 20  # finite and trained, not overflowed


def test_the_model_loads_with_the_kernel_and_checkpointing_asked_for(model_path):
    import torch

    from engine.core.models import load_for_training

    cpu = torch.device("cpu")
    finetune = parse_sweep({**_sweep_dict(), "finetune": {"method": "lora"}}).finetune
    model = load_for_training(model_path, finetune, cpu, False, "eager", True)
    assert model.config._attn_implementation == "eager"
    assert model.base_model.model.is_activation_checkpointing and not model.config.use_cache
    plain = load_for_training(model_path, finetune.model_copy(update={"method": "full"}), cpu)
    assert plain.config._attn_implementation == "sdpa" and not plain.is_activation_checkpointing
