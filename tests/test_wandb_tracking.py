"""Weights & Biases tracking, real W&B in offline mode, read back from its run files: one run
per trial with its cell and every report, failed trials ended as failed, merges with their
ingredients, the sweep's results as tables, a resume that logs no finished trial twice, and
no secret in any file of the run directory.

The sweep is run with `raysoup run` and has a trial that fails at run time, so the same run
also checks what the command says and its exit code when trials fail."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import engine
from engine.cli import app
from engine.core.rundir import RunDir
from engine.report.board import candidate_board
from engine.report.result import load_result
from engine.tracking import wandb_runs
from engine.tracking.checks import tracking_problems
from engine.tracking.wandb_runs import LEDGER, Tracker
from sweeps import parse_sweep
from tests.conftest import DEMO_DATA
from tests.failing import FAILS_ON_WORDS
from tests.test_sweep_run import tiny_sweep
from tests.wandb_files import read_runs

pytestmark = pytest.mark.usefixtures("ray_local")

SECRETS = {
    "WANDB_API_KEY": "marker-wandb-key-5c1e",
    "HF_TOKEN": "marker-hf-token-77aa",
    "AWS_SECRET_ACCESS_KEY": "marker-aws-secret-9f3d",
}
ARGV_SECRET = "--token=marker-argv-token-3b2c"


def tracked_sweep(name: str) -> dict:
    # The metric raises on the reverse task's word answers: its trials fail, add's finish.
    sweep = tiny_sweep(name, data_scale=None, finetune={"method": "full"}, metric=FAILS_ON_WORDS)
    sweep["tasks"] = {
        task: {split: str(DEMO_DATA / task / f"{split}.jsonl") for split in ("train", "eval")}
        for task in ("add", "reverse")
    }
    sweep["data"] = {"format": "prompt_completion"}
    sweep["train"].update(max_steps=4, eval_every=2)
    sweep["seeds"] = [0, 1]
    sweep["checkpoint"] = {"every": 2, "keep": 1}
    sweep["resources"] = {"max_failures": 0}
    sweep["merge"] = [{"type": "soup", "method": "uniform", "across": ["seed"]}]
    sweep["tracking"] = {"wandb": {"project": "tests", "tags": ["ci"]}}
    return sweep


@pytest.fixture(scope="module")
def command(tmp_path_factory):
    """`raysoup run` of the sweep, with secrets in the environment and on the command line;
    the command reuses this module's Ray. Its outcome, and the result in its run directory."""
    storage = tmp_path_factory.mktemp("runs")
    path = storage / "tracked.yaml"
    path.write_text(json.dumps(tracked_sweep("tracked") | {"storage": str(storage)}))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SECRETS.items():
            patch.setenv(name, value)
        patch.setattr(sys, "argv", [*sys.argv, ARGV_SECRET])
        outcome = CliRunner().invoke(app, ["run", str(path)])
    return outcome, load_result(storage / "tracked")


@pytest.fixture(scope="module")
def tracked(command):
    _, result = command
    return result, read_runs(result.run_dir)


def test_the_command_exits_1_and_names_the_failed_trials(command):
    outcome, result = command
    assert outcome.exit_code == 1, outcome.output
    assert "2 failure(s)" in outcome.output and "trial reverse/s0 failed" in outcome.output
    status = dict(zip(result.trials["name"], result.trials["status"]))
    assert status == {
        "add/s0": "done",
        "add/s1": "done",
        "reverse/s0": "error",
        "reverse/s1": "error",
    }
    failed = result.trials.set_index("name").loc["reverse/s0"]
    assert "fails on word answers" in failed["error"]
    assert result.leaderboard().iloc[-1]["status"] == "error"


def by_type(runs, job_type: str) -> dict:
    return {run.name: run for run in runs if run.job_type == job_type}


def test_each_trial_has_one_run_with_its_cell_and_every_report(tracked):
    result, runs = tracked
    train = by_type(runs, "train")
    assert sorted(train) == sorted(result.trials["name"])
    for row in result.trials.to_dict("records"):
        run = train[row["name"]]
        assert (run.project, run.group, run.tags) == ("tests", "tracked", ["ci"])
        assert (run.config["task"], run.config["seed"]) == (row["task"], row["seed"])
        assert run.config["train"]["lr"] == 3e-3 and run.config["train"]["max_steps"] == 4
        if row["status"] == "done":
            assert sorted(run.history) == [2, 4]
            assert run.history[4]["eval_loss"] == pytest.approx(row["eval_loss"])
            assert (run.exit_code, run.summary["raysoup/state"]) == (0, "finished")
            assert [a.name for a in run.artifacts] == [row["name"].replace("/", "-")]
        else:
            assert row["task"] == "reverse"
            assert (run.exit_code, run.summary["raysoup/state"]) == (1, "failed")
            assert "fails on word answers" in run.summary["raysoup/error"]


def test_each_merge_is_a_run_with_its_recipe_and_ingredients(tracked):
    result, runs = tracked
    merges = by_type(runs, "merge")
    assert sorted(merges) == sorted(result.merges["candidate"])
    for row in result.merges.to_dict("records"):
        run = merges[row["candidate"]]
        assert (run.config["kind"], run.config["method"]) == ("soup", row["method"])
        assert run.config["ingredients"] == list(row["ingredients"])
        if row["status"] != "done":
            assert run.exit_code == 1
            continue
        (artifact,) = run.artifacts
        assert json.loads(artifact.metadata)["ingredients"] == list(row["ingredients"])
        refs = [entry.ref for entry in artifact.manifest.contents]
        folder = Path(row["path"]).resolve()  # referenced file by file, nothing copied
        assert sorted(refs) == sorted(p.as_uri() for p in folder.rglob("*") if p.is_file())
    assert any(row["status"] == "done" for row in result.merges.to_dict("records"))


def test_the_results_run_holds_the_leaderboard_and_the_figures(tracked):
    result, runs = tracked
    (run,) = by_type(runs, "results").values()
    (logged,) = run.history.values()
    board = table_rows(run, logged["leaderboard"])
    ranked = candidate_board(result.sweep, result.trials, result.merges, result.evals)
    assert [row["candidate"] for row in board] == list(ranked["candidate"])
    evals = table_rows(run, logged["evals"])
    assert len(evals) == len(result.evals)
    figures = {key for key in logged if key.startswith("figures/")}
    assert figures == {f"figures/{p.stem}" for p in RunDir(result.run_dir).plots.glob("*.png")}
    assert figures, "the report draws at least the learning curves"


def table_rows(run, cell: dict) -> list[dict]:
    path = run.file.parent / "files" / cell["path"]
    data = json.loads(path.read_text())
    return [dict(zip(data["columns"], row)) for row in data["data"]]


def test_no_secret_is_written_anywhere_in_the_run_directory(tracked):
    result, _ = tracked
    markers = [*SECRETS.values(), ARGV_SECRET.split("=", 1)[1]]
    files = [p for p in Path(result.run_dir).rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files)
    leaked = [(p, m) for p in files for m in markers if m.encode() in p.read_bytes()]
    assert leaked == []


def test_a_resume_logs_no_finished_trial_or_merge_again(tracked):
    result, runs = tracked
    engine.resume(result.run_dir, progress=False)
    again = read_runs(result.run_dir)
    done = set(result.trials.loc[result.trials["status"] == "done", "name"])
    done |= set(result.merges.loc[result.merges["status"] == "done", "candidate"])
    for name in done:
        assert [r.name for r in again].count(name) == 1, name
    assert len(by_type(again, "results")) == 1  # the same name: a second run of it
    assert sum(r.job_type == "results" for r in again) == 2
    ledger = json.loads((Path(result.run_dir) / "wandb" / LEDGER).read_text())
    assert {ledger[name]["state"] for name in done} == {"finished"}


def test_online_without_a_key_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    sweep = parse_sweep(tracked_sweep("online") | {"tracking": {"wandb": {"mode": "online"}}})
    (problem,) = tracking_problems(sweep)
    assert problem.startswith("tracking.wandb.mode: 'online' needs a W&B API key")
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert tracking_problems(sweep) == []
    assert tracking_problems(parse_sweep(tracked_sweep("offline"))) == []


def test_tracking_is_off_unless_asked_and_offline_when_asked():
    plain = {k: v for k, v in tracked_sweep("plain").items() if k != "tracking"}
    assert not parse_sweep(plain).tracking.wandb_on()
    asked = parse_sweep(tracked_sweep("asked")).tracking
    assert asked.wandb_on() and asked.wandb.mode == "offline"
    off = parse_sweep(plain | {"tracking": {"wandb": {"mode": "disabled"}}})
    assert not off.tracking.wandb_on()


def test_an_unreachable_server_costs_one_timeout_then_runs_go_unlogged(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    server = {"mode": "online", "base_url": "http://127.0.0.1:9", "timeout": 3}  # port 9: none
    online = tracked_sweep("online") | {"tracking": {"wandb": server}}
    tracker = Tracker(parse_sweep(online), RunDir.at(str(tmp_path / "online")))
    assert tracker.start("a", "a", "train", {}) is None  # W&B's own timeout, once
    tried = []
    monkeypatch.setattr(wandb_runs.wandb, "init", lambda **kwargs: tried.append(kwargs))
    assert tracker.start("b", "b", "train", {}) is None
    assert tried == []  # no second wait for the same server: W&B is not asked again
