"""Preference objectives (no Ray): the losses equal TRL's on the same batch and reference
log-probabilities, DPO moves preference accuracy up on a planted set, the reference is the base
model's, and each objective trains."""

from __future__ import annotations

import json
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from engine.core.batches import collate_mismatched, collate_pairs, pair_logps
from engine.core.encode import IGNORE
from engine.core.models import load_tokenizer
from engine.demo.tiny import save_tiny_model
from engine.prepare.reference import load_reference, score_task, settings
from engine.prepare.splits import load_split
from engine.prepare.tokenize import tokenize_batch
from engine.train.loop import TrialSpec, train
from engine.train.losses import PairLoss
from engine.train.objectives import Pairs, orpo, simpo
from sweeps import parse_sweep
from tests.conftest import DEMO_DATA
from tests.test_train_loop import RecordingSession

trl = pytest.importorskip("trl", reason="trl (a test dependency) compares the losses")


def pair_sweep(objective: str = "dpo", beta: float = 0.5, **train) -> dict:
    return {
        "name": "pairs",
        "model": {"preset": "tiny-random"},
        "data": {"train": str(DEMO_DATA / "add" / "pairs_train.jsonl"), "format": "preference"},
        "finetune": {"objective": objective, "preference": {"beta": beta}},
        "train": {"lr": 1e-3, "max_steps": 30, "batch_size": 8, "seq_len": 24, **train},
        "checkpoint": {"every": 30},
    }


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("model"), arch="llama", seed=0))


def prepare_pairs(folder, rows: dict[str, list[dict]], model_path: str, sweep) -> None:
    """Prepared splits (and reference log-probabilities) written without Ray, through
    prepare's own functions."""
    for split, examples in rows.items():
        (folder / split).mkdir(parents=True)
        table = tokenize_batch(pa.Table.from_pylist(examples), sweep.data, model_path, False)
        pq.write_table(table, folder / split / "part.parquet")
    wanted = settings(sweep)
    if wanted is not None:
        score_task(str(folder), model_path, wanted, False)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory, model_path):
    rows = [json.loads(line) for line in (DEMO_DATA / "add" / "pairs_train.jsonl").open()]
    folder = tmp_path_factory.mktemp("pairs")
    sweep = parse_sweep(pair_sweep())
    prepare_pairs(folder, {"train": rows[:64], "eval": rows[64:96]}, model_path, sweep)
    return folder


def a_batch(pairs_dir, model_path, rows=6):
    data = load_split(pairs_dir, "train")
    pad = load_tokenizer(model_path).pad_token_id
    return collate_pairs(data, np.arange(rows), 24, pad, torch.device("cpu"))


@pytest.mark.parametrize("objective,loss_type", [("dpo", "sigmoid"), ("ipo", "ipo")])
def test_dpo_and_ipo_equal_trls_trainer_on_the_same_batch(
    objective, loss_type, model_path, pairs_dir, tmp_path
):
    import datasets

    batch = a_batch(pairs_dir, model_path)
    rows = len(batch["input_ids"]) // 2
    gen = torch.Generator().manual_seed(1)
    ref = {k: -20 * torch.rand(rows, generator=gen) for k in ("ref_chosen", "ref_rejected")}
    beta = 0.3
    theirs_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    trainer = trl.DPOTrainer(
        model=theirs_model,
        args=trl.DPOConfig(
            output_dir=str(tmp_path),
            loss_type=[loss_type],
            beta=beta,
            report_to=[],
            use_cpu=True,
            precompute_ref_log_probs=True,
        ),
        train_dataset=datasets.Dataset.from_list(
            [{"prompt": "1+1=", "chosen": " 2", "rejected": " 3"}] * 2
        ),
        processing_class=load_tokenizer(model_path),
    )
    trainer.model.train()
    theirs = trainer._compute_loss(
        trainer.model,
        {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "completion_mask": (batch["labels"] != IGNORE).long(),
            "ref_chosen_logps": ref["ref_chosen"],
            "ref_rejected_logps": ref["ref_rejected"],
        },
        False,
    )
    sweep = parse_sweep(pair_sweep(objective, beta=beta))
    ours_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    ours = PairLoss(sweep, 0, torch.device("cpu")).loss(ours_model, {**batch, **ref}, [rows, 0])
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert abs(ours.item() - np.log(2)) > 1e-3  # not the value at zero margins


def test_kto_equals_trls_trainer_with_the_same_mismatched_pairs(model_path, pairs_dir, tmp_path):
    import datasets

    batch = a_batch(pairs_dir, model_path)
    data = load_split(pairs_dir, "train")
    pad = load_tokenizer(model_path).pad_token_id
    batch["mismatched"] = collate_mismatched(data, np.arange(6), 24, pad, torch.device("cpu"))
    gen = torch.Generator().manual_seed(2)
    ref = {k: -20 * torch.rand(6, generator=gen) for k in ("ref_chosen", "ref_rejected")}
    # the reference well below the policy on mismatched pairs: the reference point z is > 0
    ref["ref_mismatched"] = torch.full((6,), -60.0)
    weights = {"desirable_weight": 1.3, "undesirable_weight": 0.7}
    unpaired = [{"prompt": "1+1=", "completion": c, "label": c == " 2"} for c in (" 2", " 3")]
    trainer = trl.KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
        args=trl.KTOConfig(
            output_dir=str(tmp_path),
            beta=0.3,
            report_to=[],
            use_cpu=True,
            precompute_ref_log_probs=True,
            per_device_train_batch_size=2,
            **weights,
        ),
        train_dataset=datasets.Dataset.from_list(unpaired * 2),
        processing_class=load_tokenizer(model_path),
    )
    trainer.model.train()
    twice = batch["mismatched"]  # one mismatched pair per row: each pair's, for both rows
    theirs = trainer._compute_loss(
        trainer.model,
        {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "completion_mask": (batch["labels"] != IGNORE).long(),
            "label": torch.tensor([True] * 6 + [False] * 6),
            "ref_logps": torch.cat([ref["ref_chosen"], ref["ref_rejected"]]),
            "KL_input_ids": twice["input_ids"].repeat(2, 1),
            "KL_attention_mask": twice["attention_mask"].repeat(2, 1),
            "KL_completion_mask": (twice["labels"] != IGNORE).long().repeat(2, 1),
            "ref_KL_logps": ref["ref_mismatched"].repeat(2),
        },
        False,
    )
    sweep = parse_sweep(
        {
            **pair_sweep("kto", beta=0.3),
            "finetune": {"objective": "kto", "preference": {"beta": 0.3, **weights}},
        }
    )
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    loss = PairLoss(sweep, pad, torch.device("cpu"))
    ours = loss.loss(model, {**batch, **ref}, [6, 0])
    assert loss._kl(model, {**batch, **ref}).item() > 0
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_simpo_and_orpo_equal_trls_losses(model_path, pairs_dir):
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    batch = a_batch(pairs_dir, model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sums = CPOTrainer.get_batch_logps(logits, batch["labels"], average_log_prob=False)
    means = CPOTrainer.get_batch_logps(logits, batch["labels"], average_log_prob=True)
    counts = (batch["labels"][:, 1:] != IGNORE).sum(1)
    pairs = Pairs(*sums.chunk(2), *counts.chunk(2))
    cfg = types.SimpleNamespace(beta=0.3, simpo_gamma=0.7, label_smoothing=0.1)
    cpu = types.SimpleNamespace(device=torch.device("cpu"))
    their_simpo = types.SimpleNamespace(**vars(cfg), alpha=0.0, loss_type="simpo", accelerator=cpu)
    theirs, their_c, their_r = CPOTrainer.cpo_loss(their_simpo, *means.chunk(2))
    ours = simpo(pairs, cfg)
    torch.testing.assert_close(ours.losses, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.chosen_rewards, their_c, atol=1e-5, rtol=0)

    their_orpo = types.SimpleNamespace(beta=cfg.beta, accelerator=cpu)
    ratio_terms = ORPOTrainer.odds_ratio_loss(their_orpo, *means.chunk(2))[0]
    chosen_nll = -sums.chunk(2)[0].sum() / counts.chunk(2)[0].sum()  # their token-mean CE
    ours = orpo(pairs, cfg)
    assert ours.nll_weight == 1.0
    torch.testing.assert_close(ours.losses, -ratio_terms, atol=1e-5, rtol=0)
    total = ours.losses.mean() - pairs.chosen.sum() / counts.chunk(2)[0].sum()
    assert total.item() == pytest.approx((chosen_nll - ratio_terms.mean()).item(), abs=1e-5)


def test_the_reference_is_the_base_models_log_probabilities_in_the_splits_order(
    model_path, pairs_dir
):
    data = load_split(pairs_dir, "eval")
    stored = load_reference(pairs_dir, "eval", 24, len(data["input_ids"]))
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    cfg = parse_sweep(pair_sweep()).train
    pad = load_tokenizer(model_path).pad_token_id
    fresh = pair_logps(base, data, cfg, pad, torch.device("cpu"))
    np.testing.assert_allclose(stored["ref_chosen"], fresh["chosen"], atol=1e-5)
    np.testing.assert_allclose(stored["ref_rejected"], fresh["rejected"], atol=1e-5)
    assert not np.allclose(fresh["chosen"], fresh["rejected"])


def planted_rows(model_path: str) -> dict[str, list[dict]]:
    """Demo prompts, each with the same two three-letter words as completions: of the pairs of
    candidate words, the one the base model tells apart least, and the word it finds less
    likely chosen. An objective has to turn the base's preference around."""
    prompts = [json.loads(line)["prompt"] for line in (DEMO_DATA / "add" / "train.jsonl").open()]
    words = [" cat", " dog", " sun", " red", " big", " top", " map", " pen"]
    sweep = parse_sweep(pair_sweep("sft"))
    probe = [{"prompt": p, "chosen": w, "rejected": w} for w in words for p in prompts[:16]]
    table = tokenize_batch(pa.Table.from_pylist(probe), sweep.data, model_path, False)
    data = {
        k: table[k].to_pylist() for k in ("input_ids", "labels", "rejected_ids", "rejected_labels")
    }
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    pad = load_tokenizer(model_path).pad_token_id
    score = pair_logps(base, data, sweep.train, pad, torch.device("cpu"))["chosen"]
    mean = score.reshape(len(words), -1).mean(1)
    gaps = {
        (i, j): mean[i] - mean[j] for i in range(len(words)) for j in range(len(words)) if i != j
    }
    low, high = min((k for k, g in gaps.items() if g < 0), key=lambda k: -gaps[k])
    rows = [{"prompt": p, "chosen": words[low], "rejected": words[high]} for p in prompts[:160]]
    return {"train": rows[:128], "eval": rows[128:]}


@pytest.mark.parametrize("objective", ["dpo", "ipo", "kto", "simpo", "orpo"])
def test_each_objective_moves_preference_accuracy_up_on_a_planted_set(
    objective, model_path, tmp_path
):
    sweep = parse_sweep(pair_sweep(objective))
    prepare_pairs(tmp_path / "data", planted_rows(model_path), model_path, sweep)
    spec = TrialSpec(
        sweep=sweep, model_path=model_path, data_dir=tmp_path / "data", data_size=None, seed=0
    )
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    pad = load_tokenizer(model_path).pad_token_id
    logps = pair_logps(
        base, load_split(tmp_path / "data", "eval"), sweep.train, pad, torch.device("cpu")
    )
    before = float(np.mean(logps["chosen"] > logps["rejected"]))
    session = RecordingSession(tmp_path / "run")
    last = train(spec, session)
    assert before <= 0.5
    assert last["preference_accuracy"] >= 0.9, (before, last)
    assert last["reward_margin"] > 0
    assert np.isfinite(last["train_loss"]) and np.isfinite(last["eval_loss"])


@pytest.mark.parametrize("method", ["lora", "qlora", "hft"])
def test_dpo_trains_under_every_method(method, model_path, tmp_path):
    if method == "qlora":
        pytest.importorskip("bitsandbytes", reason="qlora needs bitsandbytes (raysoup[qlora])")
    raw = pair_sweep("dpo", lr=3e-3)
    raw["finetune"]["method"] = method
    sweep = parse_sweep(raw)
    prepare_pairs(tmp_path / "data", planted_rows(model_path), model_path, sweep)
    spec = TrialSpec(
        sweep=sweep, model_path=model_path, data_dir=tmp_path / "data", data_size=None, seed=0
    )
    reports = RecordingSession(tmp_path / "run")
    last = train(spec, reports)
    assert last["reward_margin"] > 0.05, last  # the chosen completions pulled ahead
    assert last["train_loss"] < np.log(2)
