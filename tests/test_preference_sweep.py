"""A preference sweep on Ray, end to end: prepare computes the reference log-probabilities once,
LoRA trials of two objectives train on pairs over two data sizes, a greedy soup chooses by
preference accuracy, and the evaluate stage ranks every candidate by it."""

from __future__ import annotations

import json

import numpy as np

import engine
from engine.prepare.reference import REFERENCE
from engine.prepare.splits import load_split
from sweeps import parse_sweep
from tests.conftest import DEMO_DATA


def test_a_dpo_and_orpo_sweep_ranks_candidates_by_preference_accuracy(ray_local, tmp_path):
    pairs = DEMO_DATA / "add"
    sweep = parse_sweep(
        {
            "name": "pairs",
            "model": {"preset": "tiny-random"},
            "finetune": {
                "method": "lora",
                "lora": {"r": 4, "alpha": 8},
                "objective": {"grid": ["dpo", "orpo"]},
                "preference": {"beta": 0.2},
            },
            "data": {
                "train": str(pairs / "pairs_train.jsonl"),
                "eval": str(pairs / "pairs_eval.jsonl"),
                "test": str(pairs / "pairs_test.jsonl"),
                "format": "preference",
            },
            "data_scale": [40, 80],
            "train": {"max_steps": 4, "batch_size": 4, "seq_len": 24, "eval_every": 2},
            "checkpoint": {"every": 2},
            "merge": [{"type": "soup", "method": "greedy", "across": ["finetune.objective"]}],
        }
    )
    assert sweep.metric == "preference_accuracy" and sweep.direction() == "max"
    result = engine.run(sweep, storage=str(tmp_path), progress=False)
    assert list(result.trials["status"]) == ["done"] * 4, result.trials["error"].tolist()
    assert result.failures() == []

    run = tmp_path / "pairs"
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["reference"]["seq_lens"] == [24]
    data = run / "data" / "default"
    assert (data / REFERENCE / "train-24.parquet").is_file()
    assert (
        len(load_split(data, "train")["rejected_ids"])
        == manifest["tasks"]["default"]["train"]["rows"]
    )

    trials = result.trials
    assert set(trials["finetune.objective"]) == {"dpo", "orpo"}
    assert trials["preference_accuracy"].between(0, 1).all()
    assert np.isfinite(trials["reward_margin"]).all()

    soups = result.merges
    assert (soups["status"] == "done").all(), soups["error"].tolist()

    evals = result.evals
    scored = evals[evals["metric"] == "preference_accuracy"]
    assert set(scored["eval_set"]) == {"default", "default-test"}
    assert set(scored["candidate"]) >= set(trials["name"]) | set(soups["candidate"])
    assert scored["value"].between(0, 1).all() and scored["low"].notna().all()
    assert sweep.evaluate.rank_by == "preference_accuracy"
    board = result.candidates()  # ranked by the selection set's preference accuracy
    assert {"base", "trial", "soup"} <= set(board["kind"])
    assert board["selection"].is_monotonic_decreasing
    by_name = scored[scored["eval_set"] == "default"].set_index("candidate")["value"]
    assert board.set_index("candidate")["selection"].to_dict() == by_name.to_dict()
