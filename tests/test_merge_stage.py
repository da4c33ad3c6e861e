"""The merge stage over real LoRA trials on local Ray: checkpoints kept for the plans that read
them, adapters baked into full weights once and shared between merges, merges equal to the mean
of those bakes, and greedy soups that optimise the selection loss in the right direction."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

import engine
from engine.core.rundir import RunDir
from engine.merge.job import full_weights, run_job
from engine.merge.planner import MergeJob, plan_jobs
from engine.merge.scorer import SelectionScorer
from merging import bake_adapter
from sweeps import parse_sweep
from tests.conftest import DEMO_DATA
from tests.merging.conftest import load_all

pytestmark = pytest.mark.usefixtures("ray_local")
STEPS = 4


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-merges")
    for split, rows in (("train", 200), ("eval", 24)):
        lines = (DEMO_DATA / "add" / f"{split}.jsonl").read_text().splitlines()[:rows]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    sweep = {
        "name": "lora-merges",
        "model": {"preset": "tiny-random"},
        "finetune": {"method": "lora", "lora": {"r": 4, "alpha": 8}},
        "data": {
            "train": str(root / "train.jsonl"),
            "eval": str(root / "eval.jsonl"),
            "format": "prompt_completion",
        },
        "train": {"lr": 1e-2, "max_steps": STEPS, "batch_size": 8, "seq_len": 24},
        "seeds": [0, 1],
        # Keep 1, but the checkpoint average below reads the last 3.
        "checkpoint": {"every": 1, "keep": 1},
        "merge": [
            {"type": "checkpoint_average", "select": "last", "k": 3},
            {"type": "soup"},
            {"type": "soup", "name": "greedy", "method": "greedy"},
        ],
        "evaluate": {"batch_size": 8},
    }
    return engine.run(parse_sweep(sweep), storage=str(root / "runs"), progress=False)


def by_plan(result, plan: str) -> list:
    merges = result.merges
    return [row for _, row in merges[merges["plan"] == plan].iterrows()]


def mean_of(folders: list[Path]) -> dict[str, torch.Tensor]:
    weights = [load_all(f) for f in folders]
    return {name: sum(w[name] for w in weights) / len(weights) for name in weights[0]}


def assert_weights_equal(folder: Path, expected: dict[str, torch.Tensor]) -> None:
    merged = load_all(folder)
    assert merged.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.allclose(merged[name], value, atol=1e-6), name


def test_every_merge_is_made(result):
    assert len(result.trials) == 2 and set(result.trials["status"]) == {"done"}
    assert set(result.merges["status"]) == {"done"}, result.merges["error"].tolist()
    assert sorted(result.merges["plan"]) == ["avg", "avg", "greedy", "soup"]


def test_trials_keep_the_checkpoints_a_last_k_average_reads(result):
    for _, trial in result.trials.iterrows():
        kept = [Path(p) for p in trial["checkpoints"]]
        assert len(kept) == 3 and all(p.is_dir() for p in kept)
        assert Path(trial["checkpoint"]) == kept[-1]
        steps = [json.loads((p / "trial.json").read_text())["step"] for p in kept]
        assert steps == [STEPS - 2, STEPS - 1, STEPS]
        assert all((p / "adapter_model.safetensors").is_file() for p in kept)


def test_lora_checkpoints_are_baked_into_full_weights_once_each(result):
    run = RunDir(Path(result.run_dir))
    jobs = [j for j in plan_jobs(result.sweep, result.trials) if not j.skipped]
    reads = [path for job in jobs for path in job.inputs]
    baked = [p for p in (run.merges / ".baked").iterdir() if not p.name.startswith(".")]
    # Every soup reads final checkpoints that the checkpoint averages read too: one bake each.
    assert len(reads) > len(set(reads)) == len(baked) == 2 * 3
    for folder in baked:
        assert (folder / "config.json").is_file() and not (folder / "adapter_config.json").exists()
    base = str(run.model)
    assert {Path(full_weights(path, base, run)) for path in reads} == set(baked)


def test_a_lora_checkpoint_average_is_the_mean_of_its_baked_checkpoints(result, tmp_path):
    base = RunDir(Path(result.run_dir)).model
    trials = result.trials.set_index("name")
    for row in by_plan(result, "avg"):
        (trial,) = row["ingredients"]
        bakes = [
            bake_adapter(base, path, tmp_path / f"{trial}-{i}")
            for i, path in enumerate(trials.loc[trial, "checkpoints"])
        ]
        assert_weights_equal(Path(row["path"]), mean_of(bakes))


def test_a_lora_soup_is_the_mean_of_its_baked_trials(result, tmp_path):
    base = RunDir(Path(result.run_dir)).model
    trials = result.trials.set_index("name")
    (row,) = by_plan(result, "soup")
    assert sorted(row["kept"]) == sorted(row["ingredients"]) == sorted(trials.index)
    bakes = [
        bake_adapter(base, trials.loc[t, "checkpoint"], tmp_path / t) for t in row["ingredients"]
    ]
    assert_weights_equal(Path(row["path"]), mean_of(bakes))


@pytest.fixture(scope="module")
def scorer(result):
    run = RunDir(Path(result.run_dir))
    score = SelectionScorer(result.sweep, run, ["default"])
    return lambda path: score(full_weights(str(path), str(run.model), run))


def test_the_greedy_soup_starts_from_the_lowest_selection_loss(result, scorer):
    (row,) = by_plan(result, "greedy")
    trials = result.trials.set_index("name")
    losses = {t: scorer(trials.loc[t, "checkpoint"]) for t in row["ingredients"]}
    assert losses[row["kept"][0]] == min(losses.values())
    assert scorer(row["path"]) <= min(losses.values())


@pytest.fixture(scope="module")
def far_model(result, tmp_path_factory) -> Path:
    """The base model plus large noise: far worse on the selection split than any trial."""
    from safetensors.torch import save_file

    base = RunDir(Path(result.run_dir)).model
    folder = tmp_path_factory.mktemp("far") / "far"
    shutil.copytree(base, folder)
    generator = torch.Generator().manual_seed(0)
    noisy = {k: v + torch.randn(v.shape, generator=generator) for k, v in load_all(base).items()}
    (folder / "model.safetensors").unlink()
    save_file(noisy, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_a_greedy_soup_keeps_what_lowers_the_selection_loss(result, scorer, far_model):
    """A greedy soup of both trials and a far worse model: minimising the loss starts from the
    best trial and never takes the far model; maximising it would start from the far model."""
    run = RunDir(Path(result.run_dir))
    (soup,) = [j for j in plan_jobs(result.sweep, result.trials) if j.greedy]
    job = dataclasses.replace(
        soup,
        candidate="greedy-with-far",
        ingredients=[*soup.ingredients, "far"],
        inputs=[*soup.inputs, str(far_model)],
    )
    assert isinstance(job, MergeJob)
    row = run_job(job, result.sweep.model_dump_json(), str(run.root), str(run.model))
    assert row["status"] == "done", row["error"]
    losses = dict(zip(job.ingredients, map(scorer, job.inputs)))
    assert losses["far"] > max(v for k, v in losses.items() if k != "far")
    assert "far" not in row["kept"]
    assert losses[row["kept"][0]] == min(losses.values())
    assert scorer(row["path"]) <= min(losses.values())
