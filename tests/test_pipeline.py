"""The whole pipeline on local Ray: two tasks, two seeds, every plan kind, every candidate
evaluated, one leaderboard; its tables' contents and lineage, the selection/test discipline, and
resuming after an interruption between stages."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import engine
from engine.core.rundir import RunDir
from sweeps import parse_sweep
from sweeps.leaderboard import metric_table, set_scores
from tests.conftest import DEMO_DATA

pytestmark = pytest.mark.usefixtures("ray_local")
TASKS = ("add", "reverse")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Each demo task with short eval (selection) and test files."""
    root = tmp_path_factory.mktemp("data")
    for task in TASKS:
        (root / task).mkdir()
        for split, rows in (("train", 400), ("eval", 24), ("test", 24)):
            lines = (DEMO_DATA / task / f"{split}.jsonl").read_text().splitlines()[:rows]
            (root / task / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def pipeline_sweep(data: Path, **extra) -> dict:
    sweep = {
        "name": "pipeline",
        "model": {"preset": "tiny-random"},
        "data": {"format": "prompt_completion"},
        "tasks": {
            task: {
                split: str(data / task / f"{split}.jsonl") for split in ("train", "eval", "test")
            }
            for task in TASKS
        },
        "train": {"lr": 3e-3, "max_steps": 4, "batch_size": 8, "seq_len": 24, "eval_every": 2},
        "seeds": [0, 1],
        "checkpoint": {"every": 2, "keep": 1},
        "merge": [
            {"type": "checkpoint_average"},
            {"type": "soup", "method": "greedy"},
            {
                "type": "task_merge",
                "method": "ties",
                "parameters": {"density": [0.5, 1.0], "weight": 1.0},
            },
        ],
        "evaluate": {"rank_by": "accuracy", "batch_size": 8},
        # One trial at a time leaves a CPU of the 2 free, so merges can start between trials.
        "resources": {"max_concurrent": 1},
    }
    sweep.update(extra)
    return sweep


@pytest.fixture(scope="module")
def result(data, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    return engine.run(parse_sweep(pipeline_sweep(data)), storage=str(storage), progress=False)


def test_every_trial_and_merge_is_made_with_its_lineage(result):
    trials = result.trials.set_index("name")
    assert len(trials) == 4 and set(trials["status"]) == {"done"}
    merges = result.merges.set_index("candidate")
    assert set(merges["status"]) == {"done"}, merges["error"].tolist()
    assert merges["kind"].value_counts().to_dict() == {
        "checkpoint_average": 4,
        "soup": 2,
        "task_merge": 4,
    }
    for name, row in merges.iterrows():
        members = trials.loc[list(row["ingredients"])]
        if row["kind"] == "soup":  # the seeds of one task
            assert members["task"].nunique() == 1 and sorted(members["seed"]) == [0, 1]
            assert len(row["kept"]) == len(set(row["kept"])) > 0
            assert set(row["kept"]) <= set(row["ingredients"])
        elif row["kind"] == "task_merge":  # one model per task, same seed
            assert sorted(members["task"]) == list(TASKS) and members["seed"].nunique() == 1
        sources = {
            "checkpoint_average": list(members["checkpoints"].iloc[0]),
            "soup": list(trials.loc[list(row["kept"]), "checkpoint"]),
            "task_merge": list(members["checkpoint"]),
        }[row["kind"]]
        recipe = (Path(row["path"]) / "recipe.yaml").read_text()
        assert sources and all(source in recipe for source in sources), name


def test_greedy_soups_start_from_the_lowest_selection_loss_and_never_lose_to_it(result):
    """The merge stage minimises the selection loss: the first ingredient a greedy soup keeps is
    the one with the lowest loss on its task's selection split, the soup scores no worse, and
    the soup's recipe averages exactly the ingredients it kept."""
    import merging
    from engine.merge.scorer import SelectionScorer

    run = RunDir(Path(result.run_dir))
    trials = result.trials.set_index("name")
    soups = result.merges[result.merges["kind"] == "soup"]
    for _, row in soups.iterrows():
        (task,) = trials.loc[list(row["ingredients"]), "task"].unique()
        score = SelectionScorer(result.sweep, run, [task])
        losses = {t: score(trials.loc[t, "checkpoint"]) for t in row["ingredients"]}
        assert losses[row["kept"][0]] == min(losses.values()), (row["candidate"], losses)
        assert score(row["path"]) <= min(losses.values())
        recipe = merging.load_recipe(Path(row["path"]) / "recipe.yaml")
        averaged = sorted(str(model.model) for model in recipe.models)
        assert averaged == sorted(trials.loc[list(row["kept"]), "checkpoint"])


def test_merges_start_while_trials_still_run(result):
    """Merges are handed to Ray as their trials finish, not after the sweep: a merge whose group
    is complete is submitted while Tune still has unfinished trials. The count is taken from
    Tune's own trial list at submission, so the check does not depend on clocks or load. (When
    a merge starts running depends on a free CPU and a worker process, so that is not checked.)"""
    unfinished = result.merges["unfinished_trials"]
    assert unfinished.notna().all(), result.merges[["candidate", "unfinished_trials"]]
    assert unfinished.between(0, len(result.trials) - 1).all(), unfinished.tolist()
    # With one trial at a time, the first trial's checkpoint average is submitted while the
    # other three trials have not finished.
    assert unfinished.max() == len(result.trials) - 1, unfinished.tolist()


def test_evals_cover_every_candidate_set_and_metric(result):
    evals = result.evals
    assert {"candidate", "kind", "eval_set", "split", "metric", "value"} <= set(evals.columns)
    assert set(evals["status"]) == {"ok"}, evals["error"].dropna().tolist()
    assert set(evals["kind"]) == {"base", "trial", "checkpoint_average", "soup", "task_merge"}
    assert evals["candidate"].nunique() == 1 + 4 + len(result.merges)
    sets = {"add": "selection", "add-test": "test", "reverse": "selection", "reverse-test": "test"}
    assert dict(evals[["eval_set", "split"]].drop_duplicates().values) == sets
    per_candidate = evals.groupby("candidate")[["eval_set", "metric"]].apply(
        lambda rows: len(rows.drop_duplicates())
    )
    assert (per_candidate == per_candidate.iloc[0]).all()
    assert {"loss", "ppl", "accuracy", "exact_match"} <= set(evals["metric"])
    accuracy = evals[evals["metric"] == "accuracy"]["value"]
    assert accuracy.between(0, 1).all()
    assert (evals[evals["metric"] == "loss"]["value"] > 0).all()


def test_one_leaderboard_ranks_everything_by_selection_only(result):
    board = result.candidates()
    assert len(board) == result.evals["candidate"].nunique()
    assert board["selection"].is_monotonic_decreasing  # accuracy: higher first
    merges = board[board["kind"].isin(["checkpoint_average", "soup", "task_merge"])]
    assert merges["gain_vs_best"].notna().all() and merges["gain_vs_mean"].notna().all()
    row = merges.iloc[0]
    test = board.set_index("candidate")["test"]
    ingredients = test[list(row["ingredients"])]
    assert row["gain_vs_best"] == pytest.approx(row["test"] - ingredients.max())
    root = Path(result.run_dir)
    markdown = (root / "leaderboard.md").read_text()
    assert all(name in markdown for name in board["candidate"])
    # Each set's own score, beside the means the leaderboard ranks by.
    sets = set_scores(result.evals, "accuracy", list(board["candidate"]))
    assert list(sets["candidate"]) == list(board["candidate"])
    selection = [c for c in sets.columns if c.endswith("(selection)")]
    assert len(selection) == 2 and sets.columns[-1].endswith("(test)")
    assert sets[selection].mean(axis=1).tolist() == pytest.approx(board["selection"].tolist())
    assert "## Each evaluation set" in markdown
    # Every metric of every (candidate, set), not only the one that ranks.
    every = metric_table(result.evals, list(board["candidate"]))
    assert len(every) == result.evals.drop_duplicates(["candidate", "eval_set"]).shape[0]
    assert {"loss", "accuracy", "exact_match"} <= set(every.columns)
    assert every.drop_duplicates("candidate")["candidate"].tolist() == list(board["candidate"])
    assert "## Every metric" in markdown
    html = (root / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "Merges against their ingredients" in html
    assert "Each evaluation set" in html and "Every metric" in html
    assert (root / "plots" / "metric_by_kind.png").is_file()


def test_the_report_command_shows_candidates(result):
    from typer.testing import CliRunner

    from engine.cli import app

    out = CliRunner().invoke(app, ["report", str(result.run_dir)], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "candidates by accuracy on the selection sets" in out.output
    assert "task merge" in out.output and "report.html" in out.output


def test_greedy_soup_never_reads_a_test_set(result, data, tmp_path):
    """Run one greedy soup again with every test file moved away: it must not notice. With the
    selection split moved away instead, it must fail: that is what it reads."""
    import dataclasses
    import shutil

    from engine.merge.job import run_job
    from engine.merge.planner import plan_jobs

    job = next(j for j in plan_jobs(result.sweep, result.trials) if j.greedy)
    run = RunDir(Path(result.run_dir))

    def soup(name: str, hidden: list[Path]) -> dict:
        aside = [tmp_path / f"{i}-{path.name}" for i, path in enumerate(hidden)]
        for path, away in zip(hidden, aside):
            shutil.move(path, away)
        try:
            return run_job(
                dataclasses.replace(job, candidate=name),
                result.sweep.model_dump_json(),
                str(run.root),
                str(run.model),
            )
        finally:
            for path, away in zip(hidden, aside):
                shutil.move(away, path)

    tests = [data / task / "test.jsonl" for task in TASKS]
    assert soup("audited", tests)["status"] == "done"
    selection = run.data / job.tasks[0] / "eval"
    failed = soup("blind", [selection])
    assert failed["status"] == "failed" and "eval" in failed["error"]


def test_resume_after_an_interruption_between_stages_redoes_only_what_is_missing(result):
    root = RunDir(Path(result.run_dir))
    kept, lost = result.merges["candidate"].iloc[0], result.merges["candidate"].iloc[-1]
    kept_record = (root.merges / f"{kept}.json").stat().st_mtime_ns
    trial_files = {p: p.read_bytes() for p in root.tune.glob("*/result.json")}
    (root.merges / f"{lost}.json").unlink()  # as if stopped during the merge stage
    evals = pd.read_parquet(root.evals)
    unevaluated = result.trials["name"].iloc[0]  # and during evaluation
    evals[evals["candidate"] != unevaluated].to_parquet(root.evals)
    for name in ("merges.parquet", "report.html"):
        (root.root / name).unlink()
    again = engine.resume(root.root, progress=False)
    assert {p: p.read_bytes() for p in trial_files} == trial_files  # no trial ran again
    assert (root.merges / f"{kept}.json").stat().st_mtime_ns == kept_record
    assert json.loads((root.merges / f"{lost}.json").read_text())["status"] == "done"
    reused = again.merges.set_index("candidate")["reused"]
    assert reused[kept] and not reused[lost]
    assert set(again.evals["candidate"]) == set(result.evals["candidate"])
    assert len(again.evals) == len(result.evals)
    before = result.evals.set_index(["candidate", "eval_set", "metric"])["value"]
    after = again.evals.set_index(["candidate", "eval_set", "metric"])["value"]
    pd.testing.assert_series_equal(after.sort_index(), before.sort_index(), rtol=1e-5)
    assert (root.root / "report.html").is_file()
