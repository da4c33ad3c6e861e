"""The demo sweep, run whole on local Ray (with fewer epochs): the shape of what it leaves.

Its scores vary by machine and are not asserted (docs/benchmarks.md records measured ones);
what is checked is that every stage ran and wrote the tables a user reads: the selection
counts, one row per trial, merge, candidate and set, the leaderboard and the scaling fit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import engine
from engine.demo import TASKS
from engine.demo.pool import PLANTED
from sweeps import load_sweep
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("ray_local")

SIZES = [125, 250, 500, 1000]
SEEDS = [0, 1]
# At 1,000 examples: an average per trial, a soup per task, a task merge per seed and weight.
MERGES = {"checkpoint_average": 4, "soup": 2, "task_merge": 4}
SETS = {"add": "selection", "reverse": "selection", "add-test": "test", "reverse-test": "test"}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """The demo sweep as `raysoup demo` runs it, trained for 4 epochs instead of 20 (a
    checkpoint every 25 steps instead of 125, so the checkpoint averages still find theirs):
    every stage, table and file is the same, in a third of the time."""
    sweep = load_sweep(REPO / "sweeps" / "examples" / "demo.yaml")
    shorter = {
        "train": sweep.train.model_copy(update={"epochs": 4}),
        "checkpoint": sweep.checkpoint.model_copy(update={"every": 25}),
    }
    sweep = sweep.model_copy(update=shorter)
    return engine.run(sweep, storage=str(tmp_path_factory.mktemp("demo")), progress=False)


def test_selection_removes_the_planted_rows(result):
    manifest = json.loads((Path(result.run_dir) / "data" / "manifest.json").read_text())
    for task in TASKS:
        stages = manifest["tasks"][task]["selection"]
        removed = {s["type"]: s["rows_in"] - s["rows_out"] for s in stages}
        assert removed == {"exact_dedup": PLANTED["exact"], "filter": PLANTED["junk"]} | {
            "near_dedup": PLANTED["near"]
        }
        assert manifest["tasks"][task]["train"]["rows"] == stages[-1]["rows_out"]


def test_every_trial_finishes(result):
    trials = result.trials
    assert len(trials) == len(TASKS) * len(SIZES) * len(SEEDS)
    assert set(trials["status"]) == {"done"}, trials["error"].tolist()
    assert trials["name"].is_unique
    for task in TASKS:
        mine = trials[trials["task"] == task]
        assert sorted(set(mine["data_size"])) == SIZES and sorted(set(mine["seed"])) == SEEDS


def test_every_merge_is_made(result):
    merges = result.merges
    assert merges["kind"].value_counts().to_dict() == MERGES
    assert set(merges["status"]) == {"done"}, merges["error"].tolist()


def test_every_candidate_is_evaluated_on_every_set(result):
    evals = result.evals
    assert set(evals["status"]) == {"ok"}, result.failures()
    n_candidates = 1 + len(result.trials) + len(result.merges)  # the base model too
    assert evals["candidate"].nunique() == n_candidates
    accuracy = evals[evals["metric"] == "accuracy"]
    assert dict(zip(accuracy["eval_set"], accuracy["split"])) == SETS
    assert len(accuracy) == n_candidates * len(SETS)
    assert accuracy["value"].between(0, 1).all() and accuracy["low"].le(accuracy["high"]).all()


def test_leaderboard_and_report_name_a_model(result):
    root = Path(result.run_dir)
    board = result.candidates()
    assert len(board) == 1 + len(result.trials) + len(result.merges)
    assert result.best()["candidate"] == board.iloc[0]["candidate"]
    assert set(result.winners()["task"]) == set(TASKS)
    assert "Use this model" in (root / "leaderboard.md").read_text()
    for name in ("report.html", "plots/scaling.png", "plots/merge_gain.png"):
        assert (root / name).stat().st_size > 0, name


def test_scaling_fits_one_curve_per_task(result):
    scaling = result.scaling()
    assert scaling["metric"] == "eval_loss" and scaling["law"] == "power"
    groups = {g["label"]: g for g in scaling["groups"]}
    assert set(groups) == {f"task={task}" for task in TASKS}
    for group in groups.values():
        assert [p["data_size"] for p in group["points"]] == SIZES
        assert all(p["seeds"] == len(SEEDS) for p in group["points"])
        assert group["status"] == "ok", group.get("message")
