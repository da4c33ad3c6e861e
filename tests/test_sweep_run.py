"""A real local-Ray sweep of a tiny model, full and LoRA, and what it leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import engine
from sweeps import SweepError, parse_sweep
from tests.conftest import DEMO_DATA

pytestmark = pytest.mark.usefixtures("ray_local")


def tiny_sweep(name: str, **extra) -> dict:
    sweep = {
        "name": name,
        "model": {"preset": "tiny-random"},
        "finetune": {"method": {"grid": ["full", "lora"]}, "lora": {"r": 4, "alpha": 8}},
        "data": {
            "train": str(DEMO_DATA / "add" / "train.jsonl"),
            "eval_fraction": 0.1,
            "format": "prompt_completion",
        },
        "train": {"lr": 3e-3, "max_steps": 6, "batch_size": 8, "seq_len": 24, "eval_every": 3},
        "data_scale": [40, 160],
        "seeds": [0],
        "checkpoint": {"every": 2, "keep": 2},
    }
    sweep.update(extra)
    return sweep


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    return engine.run(parse_sweep(tiny_sweep("tiny")), storage=str(storage), progress=False)


def test_every_trial_finishes_with_metrics(result):
    trials = result.trials
    assert len(trials) == 4
    assert set(trials["status"]) == {"done"}, trials["error"].tolist()
    assert set(trials["finetune.method"]) == {"full", "lora"}
    assert sorted(set(trials["data_size"])) == [40, 160]
    assert (trials["steps"] == 6).all()
    assert trials["eval_loss"].notna().all() and (trials["eval_loss"] > 0).all()


def test_run_directory_has_the_documented_layout(result):
    root = Path(result.run_dir)
    for name in ("sweep.yaml", "data/manifest.json", "trials.parquet", "leaderboard.md", "tune"):
        assert (root / name).exists(), name
    columns = set(pq.read_schema(root / "trials.parquet").names)
    assert {
        "name",
        "trial_id",
        "status",
        "seed",
        "data_size",
        "eval_loss",
        "steps",
        "checkpoint",
        "checkpoints",
        "finetune.method",
    } <= columns
    board = (root / "leaderboard.md").read_text()
    best = result.leaderboard().iloc[0]
    assert best["name"] in board.splitlines()[6]


def test_checkpoints_are_safetensors_and_lora_keeps_only_the_adapter(result):
    for _, row in result.trials.iterrows():
        kept = list(row["checkpoints"])
        assert len(kept) == 2 and row["checkpoint"] in kept
        final = Path(row["checkpoint"])
        assert json.loads((final / "trial.json").read_text())["step"] == 6
        assert not list(final.glob("*.bin"))
        if row["finetune.method"] == "lora":
            assert (final / "adapter_model.safetensors").is_file()
            assert not (final / "model.safetensors").exists()
        else:
            assert (final / "model.safetensors").is_file()


def test_full_checkpoint_loads_as_a_model(result):
    from transformers import AutoModelForCausalLM

    row = result.trials[result.trials["finetune.method"] == "full"].iloc[0]
    model = AutoModelForCausalLM.from_pretrained(row["checkpoint"])
    assert model.num_parameters() > 0


def test_prepared_subsets_are_nested_and_disjoint_from_eval(result):
    from engine.prepare.splits import load_split

    data = Path(result.run_dir) / "data" / "default"
    small, large = load_split(data, "train", 40), load_split(data, "train", 160)
    assert small["input_ids"] == large["input_ids"][:40]
    evals = {tuple(x) for x in load_split(data, "eval")["input_ids"]}
    train = {tuple(x) for x in load_split(data, "train")["input_ids"]}
    assert evals and not evals & train
    manifest = json.loads((data.parent / "manifest.json").read_text())["tasks"]["default"]
    assert manifest["train"]["rows"] + manifest["eval"]["rows"] == 2000


def test_same_seed_gives_the_same_losses(result, tmp_path):
    again = engine.run(parse_sweep(tiny_sweep("tiny")), storage=str(tmp_path), progress=False)
    key = ["finetune.method", "data_size"]
    first = result.trials.sort_values(key)["eval_loss"].tolist()
    second = again.trials.sort_values(key)["eval_loss"].tolist()
    assert first == pytest.approx(second, rel=1e-6, abs=1e-7)


def test_rerunning_a_finished_sweep_reuses_everything(result):
    manifest = Path(result.run_dir) / "data" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    again = engine.run(
        parse_sweep(tiny_sweep("tiny")), storage=str(Path(result.run_dir).parent), progress=False
    )
    assert manifest.stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(again.trials, result.trials)


def test_a_different_sweep_in_the_same_folder_is_refused(result):
    changed = tiny_sweep("tiny", seeds=[5])
    with pytest.raises(SweepError, match="already holds a different sweep"):
        engine.run(parse_sweep(changed), storage=str(Path(result.run_dir).parent), progress=False)


def test_data_size_above_the_data_is_refused_before_any_work(tmp_path):
    sweep = parse_sweep(tiny_sweep("big", data_scale=[100, 5000]))
    with pytest.raises(SweepError, match="data_scale: 5000 examples asked"):
        engine.run(sweep, storage=str(tmp_path), progress=False)
    assert not (tmp_path / "big").exists()


@pytest.mark.parametrize("suffix", ["parquet", "csv", "json"])
def test_prepare_reads_every_format_as_text_and_holds_out_eval(suffix, tmp_path):
    from engine.core.rundir import RunDir
    from engine.demo.tiny import save_tiny_model
    from engine.prepare.splits import load_split
    from engine.prepare.stage import prepare

    texts = [f"example number {i} says {i * 7 % 13}" for i in range(300)]
    frame = pd.DataFrame({"body": texts, "other": range(300)})
    path = tmp_path / f"train.{suffix}"
    {
        "parquet": frame.to_parquet,
        "csv": lambda p: frame.to_csv(p, index=False),
        "json": lambda p: frame.to_json(p, orient="records"),
    }[suffix](path)
    sweep = parse_sweep(
        {
            "name": "fmt",
            "model": {"preset": "tiny-random"},
            "data": {"train": str(path), "text_field": "body", "eval_fraction": 0.2},
        }
    )
    model = str(save_tiny_model(tmp_path / "model"))
    manifest = prepare(sweep, RunDir(tmp_path / "run"), model)["tasks"]["default"]
    assert manifest["train"]["rows"] + manifest["eval"]["rows"] == 300
    assert 30 < manifest["eval"]["rows"] < 90
    train = load_split(tmp_path / "run" / "data" / "default", "train")
    assert all(ids == labels for ids, labels in zip(train["input_ids"], train["labels"]))


def test_prepare_names_a_missing_field(tmp_path):
    from engine.core.rundir import RunDir
    from engine.demo.tiny import save_tiny_model
    from engine.prepare.stage import prepare

    path = tmp_path / "train.jsonl"
    path.write_text('{"content": "a"}\n{"content": "b"}\n')
    sweep = parse_sweep(
        {"name": "f", "model": {"preset": "tiny-random"}, "data": {"train": str(path)}}
    )
    with pytest.raises(SweepError, match="has no field 'text'.*its fields: content"):
        prepare(sweep, RunDir(tmp_path / "run"), str(save_tiny_model(tmp_path / "m")))


# A trial that fails at run time while the others finish: tests/test_wandb_tracking.py, whose
# sweep has one (and runs it through `raysoup run`, so it checks the exit code too).


def test_changed_data_under_a_started_sweep_is_refused(tmp_path):
    import shutil

    train = tmp_path / "train.jsonl"
    shutil.copy(DEMO_DATA / "add" / "train.jsonl", train)
    sweep = tiny_sweep("changed", data_scale=None)
    sweep["finetune"]["method"] = "full"
    sweep["data"]["train"] = str(train)
    sweep["train"]["max_steps"] = 2
    engine.run(parse_sweep(sweep), storage=str(tmp_path / "runs"), progress=False)
    train.write_text("\n".join(train.read_text().splitlines()[:500]) + "\n")
    with pytest.raises(SweepError, match="changed since"):
        engine.run(parse_sweep(sweep), storage=str(tmp_path / "runs"), progress=False)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_text_that_looks_like_a_number_stays_text(suffix, tmp_path):
    """ " 47" must reach the tokenizer as " 47" (with its space), not as the number 47."""
    import pyarrow as pa

    from engine.core.rundir import RunDir
    from engine.demo import BASE_DIR
    from engine.prepare.splits import load_split
    from engine.prepare.stage import prepare
    from engine.prepare.tokenize import tokenize_batch

    rows = [{"prompt": f"{i}+1=", "completion": f" {i + 1}"} for i in range(40)]
    path = tmp_path / f"train.{suffix}"
    frame = pd.DataFrame(rows)
    if suffix == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    sweep = parse_sweep(
        {
            "name": "num",
            "model": {"preset": "demo"},
            "data": {"train": str(path), "format": "prompt_completion", "eval_fraction": 0.2},
        }
    )
    prepare(sweep, RunDir(tmp_path / "run"), str(BASE_DIR))
    data = tmp_path / "run" / "data" / "default"
    prepared = {
        tuple(ids) for split in ("train", "eval") for ids in load_split(data, split)["input_ids"]
    }
    expected = tokenize_batch(pa.Table.from_pylist(rows), sweep.data, str(BASE_DIR), False)
    assert prepared == {tuple(ids) for ids in expected["input_ids"].to_pylist()}


def test_the_selection_split_is_the_eval_file_and_never_the_test_file(tmp_path):
    """Everything that chooses (eval_loss, top_k, greedy soups) reads `data/<task>/eval`: it must
    hold the eval file's examples, and none of the test file's."""
    import pyarrow as pa

    from engine.core.rundir import RunDir
    from engine.demo import BASE_DIR
    from engine.prepare.splits import load_split
    from engine.prepare.stage import prepare
    from engine.prepare.tokenize import tokenize_batch

    files = {}
    for split, start in (("train", 0), ("eval", 100), ("test", 200)):
        rows = [{"prompt": f"{i}+1=", "completion": f" {i + 1}"} for i in range(start, start + 30)]
        files[split] = (tmp_path / f"{split}.jsonl", rows)
        pd.DataFrame(rows).to_json(files[split][0], orient="records", lines=True)
    sweep = parse_sweep(
        {
            "name": "splits",
            "model": {"preset": "demo"},
            "data": {"format": "prompt_completion"},
            "tasks": {"add": {split: str(path) for split, (path, _) in files.items()}},
        }
    )
    prepare(sweep, RunDir(tmp_path / "run"), str(BASE_DIR))

    def tokenized(split: str) -> set[tuple[int, ...]]:
        table = pa.Table.from_pylist(files[split][1])
        batch = tokenize_batch(table, sweep.task_data("add"), str(BASE_DIR), False)
        return {tuple(ids) for ids in batch["input_ids"].to_pylist()}

    data = tmp_path / "run" / "data" / "add"
    prepared = {
        split: {tuple(x) for x in load_split(data, split)["input_ids"]}
        for split in ("train", "eval")
    }
    assert prepared["eval"] == tokenized("eval")
    assert prepared["train"] == tokenized("train")
    assert not (prepared["eval"] | prepared["train"]) & tokenized("test")
    assert not (data.parent / "test").exists() and not (data / "test").exists()
