"""`raysoup run` on a W&B sweep file with `program`/`command` (`engine/agent/`): a real script
that calls `wandb.init()` (offline) and logs `loss` from `wandb.config`, run as Ray Tune trials
with W&B's meaning of the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from engine.agent import experiment, plan, trial
from engine.agent.experiment import AgentOptions
from engine.agent.runfile import BLOCK, MetricTail, read_run, run_files
from engine.cli import app
from sweeps.errors import SweepError
from sweeps.wandb_sweeps import grid, parse_wandb_sweep, sample

pytestmark = pytest.mark.usefixtures("ray_local")

# Its loss is q + 1 / (step + 1), so a larger q is worse at every step. `mode` makes it fail,
# log no loss, or log NaN first; on SIGTERM it leaves a file saying so.
SCRIPT = """
import json, os, signal, sys, time
if "--mode=fail" in sys.argv:
    sys.exit("boom: the script failed before wandb.init")
import wandb

run = wandb.init()
config = dict(wandb.config)
os.makedirs("seen", exist_ok=True)
json_file = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
seen = {"config": config, "argv": sys.argv[1:], "run_id": run.id, "pid": os.getpid()}
seen["json_file"] = json.load(open(json_file)) if json_file else None
json.dump(seen, open(f"seen/{run.id}.json", "w"))

q, mode = config.get("q", config.get("model", {}).get("q", 1)), config.get("mode", "ok")
stubborn = q >= config.get("stubborn_from", float("inf"))  # ignores SIGTERM, lingers

def stopped(signum, frame):
    time.sleep(config.get("tidy_s", 0))  # what a script does on SIGTERM: save, close files
    open(f"seen/{run.id}.terminated", "w").close()
    if not stubborn:
        sys.exit(143)

signal.signal(signal.SIGTERM, stopped)
for step in range(config.get("steps", 3)):
    if mode == "silent":
        wandb.log({"other": step})
    elif mode == "nan" and step == 0:
        wandb.log({"loss": float("nan")})
    else:
        wandb.log({"loss": q + 1 / (step + 1)})
    time.sleep(config.get("pause", 0.05))
if stubborn:
    time.sleep(60)
"""


def sweep_file(folder: Path, **keys) -> Path:
    (folder / "train.py").write_text(textwrap.dedent(SCRIPT))
    data = {"method": "grid", "program": "train.py", "metric": {"name": "loss"}, **keys}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_file(path: Path, tmp_path: Path, **options):
    return experiment.run(plan.load(path), AgentOptions(storage=str(tmp_path / "runs"), **options))


def seen(folder: Path) -> dict[str, dict]:
    """What each script saw, by its W&B run id."""
    return {p.stem: json.loads(p.read_text()) for p in (folder / "seen").glob("*.json")}


def trial_record(result, trial_id: str) -> dict:
    return json.loads((result.run_dir / "trials" / trial_id / "trial.json").read_text())


def gone(pid: int, within: float = 15.0) -> bool:
    """Whether process `pid` ends within `within` seconds (a zombie runs nothing)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if "zombie" not in Path(f"/proc/{pid}/status").read_text():
                time.sleep(0.2)
                continue
        except FileNotFoundError:
            pass
        return True
    return False


def test_grid_runs_every_configuration_and_the_script_sees_it_in_wandb_config(tmp_path):
    command = ["${env}", "${interpreter}", "${program}", "--json", "${args_json_file}"]
    path = sweep_file(
        tmp_path,
        command=[*command, "${args_no_hyphens}"],
        parameters={
            "q": {"values": [1, 2]},
            "flag": {"value": True},
            "model": {"parameters": {"width": {"values": [8]}}},
        },
    )
    result = run_file(path, tmp_path)
    table = result.table
    assert result.failures() == [] and len(table) == 2
    assert set(table["status"]) == {"done"} and set(table["logged"]) == {3}
    scripts = seen(tmp_path)
    configs = [json.dumps(c, sort_keys=True) for c in grid(yaml.safe_load(path.read_text()))]
    assert sorted(json.dumps(s["config"], sort_keys=True) for s in scripts.values()) == sorted(
        configs
    )
    for _, row in table.iterrows():
        record = trial_record(result, row["trial_id"])
        mine = scripts[row["wandb_run_id"]]
        assert mine["config"] == record["params"] and mine["json_file"] == record["params"]
        params = record["params"]
        expected = ["flag=True", f"q={params['q']}", f"model={params['model']}"]
        assert mine["argv"][2:] == expected  # W&B's order: top level by name, then nested
        run = read_run(run_files(result.run_dir / "trials" / row["trial_id"] / "wandb")[0])
        assert run.run_id == row["wandb_run_id"] and run.exit_code == 0
        assert {k: v for k, v in run.config.items() if k != "_wandb"} == params
        losses = [h["loss"] for h in run.history.values()]
        assert row["last"] == losses[-1] and row["best"] == min(losses)
    assert table["best"].is_monotonic_increasing  # ranked, best first
    saved = pd.read_parquet(result.run_dir / "trials.parquet")
    assert list(saved["config/model/width"]) == list(table["config/model/width"])


def test_random_draws_run_cap_configurations_with_nested_parameters(tmp_path):
    parameters = {
        "model": {
            "parameters": {
                "q": {"distribution": "uniform", "min": 0, "max": 1},
                "depth": {"min": 1, "max": 3},
            }
        },
        "optimizer": {"values": ["adam", "sgd"]},
    }
    path = sweep_file(tmp_path, method="random", run_cap=2, parameters=parameters)
    result = run_file(path, tmp_path, seed=7)
    rng = np.random.default_rng(7)
    expected = [sample(parse_wandb_sweep(yaml.safe_load(path.read_text())), rng) for _ in range(2)]
    table = result.table.sort_values("trial_id")
    assert [trial_record(result, t)["params"] for t in table["trial_id"]] == expected
    scripts = seen(tmp_path)
    assert [scripts[r]["config"] for r in table["wandb_run_id"]] == expected
    assert list(table["config/model/depth"]) == [c["model"]["depth"] for c in expected]


def stopped_early(result, tmp_path, bands):
    """The trials stopped at a band, each script ended with SIGTERM and gone."""
    table, scripts = result.table, seen(tmp_path)
    stopped = table[table["status"] == "stopped"]
    for _, row in stopped.iterrows():
        assert row["logged"] in bands, row.to_dict()
        assert (tmp_path / "seen" / f"{row['wandb_run_id']}.terminated").is_file()
        assert gone(scripts[row["wandb_run_id"]]["pid"])
    return stopped


def test_hyperband_by_min_iter_stops_the_worse_trials_at_a_band(tmp_path):
    # q = 3 reaches the first band (2 values) after q = 1 and q = 2 are past it, both better;
    # its script ignores SIGTERM and would linger a minute: SIGKILL ends it
    parameters = {"q": {"values": [1, 2, 3]}, "steps": {"value": 7}, "pause": {"value": 0.3}}
    path = sweep_file(
        tmp_path,
        early_terminate={"type": "hyperband", "min_iter": 2, "eta": 3},
        parameters={**parameters, "stubborn_from": {"value": 3}},
    )
    result = run_file(path, tmp_path, grace_s=1.0)
    by_q = result.table.set_index("config/q")
    assert result.failures() == []
    assert (by_q.loc[1, "status"], by_q.loc[1, "logged"]) == ("done", 7)
    assert (by_q.loc[3, "status"], by_q.loc[3, "logged"]) == ("stopped", 2)
    assert 3 in stopped_early(result, tmp_path, bands={2, 6})["config/q"].tolist()


def test_a_stopped_script_has_its_grace_period_to_tidy_up_before_its_trial_ends(tmp_path):
    # q = 3 is stopped at the first band; its SIGTERM handler takes 2 of its 5 seconds' grace
    # before it leaves its marker: the trial's actor must not end (and take the script with
    # it) before then
    parameters = {"q": {"values": [1, 2, 3]}, "steps": {"value": 7}, "pause": {"value": 0.3}}
    path = sweep_file(
        tmp_path,
        early_terminate={"type": "hyperband", "min_iter": 2, "eta": 3},
        parameters={**parameters, "tidy_s": {"value": 2.0}},
    )
    result = run_file(path, tmp_path)
    by_q = result.table.set_index("config/q")
    assert result.failures() == [] and by_q.loc[3, "status"] == "stopped"
    stopped = stopped_early(result, tmp_path, bands={2, 6})
    for run_id in stopped["wandb_run_id"]:  # each ended by its handler's exit, not a SIGKILL
        folder = (
            result.run_dir / "trials" / stopped.set_index("wandb_run_id").loc[run_id, "trial_id"]
        )
        assert read_run(run_files(folder / "wandb")[0]).exit_code == 143


def test_hyperband_by_max_iter_and_s_stops_at_wandbs_bands_and_lets_the_best_run_on(tmp_path):
    # max_iter 9, s 2, eta 3: W&B's bands are 1 and 3; a run is never stopped at max_iter
    hyperband = {"type": "hyperband", "max_iter": 9, "s": 2, "eta": 3}
    path = sweep_file(
        tmp_path,
        early_terminate=hyperband,
        parameters={"q": {"values": [1, 2, 3]}, "steps": {"value": 5}, "pause": {"value": 0.3}},
    )
    result = run_file(path, tmp_path)
    by_q = result.table.set_index("config/q")
    assert (by_q.loc[1, "status"], by_q.loc[1, "logged"]) == ("done", 5)
    assert (by_q.loc[3, "status"], by_q.loc[3, "logged"]) == ("stopped", 1)
    stopped_early(result, tmp_path, bands={1, 3})


def test_metric_target_ends_the_sweep(tmp_path):
    metric = {"name": "loss", "goal": "minimize", "target": 1.6}  # q = 1 logs 2, then 1.5
    path = sweep_file(
        tmp_path,
        metric=metric,
        parameters={"q": {"values": [1, 2, 3, 4]}, "steps": {"value": 6}, "pause": {"value": 0.3}},
    )
    result = run_file(path, tmp_path)
    first = result.table.set_index("config/q").loc[1]
    assert result.target == {"trial_id": first["trial_id"], "value": 1.5, "target": 1.6}
    assert len(result.table) < 4 and set(result.table["status"]) <= {"stopped", "done"}
    again = run_file(path, tmp_path)  # the sweep is over: no trial runs again
    assert again.table["trial_id"].tolist() == result.table["trial_id"].tolist()


def test_failed_and_silent_scripts_are_errors_and_the_command_exits_1(tmp_path):
    path = sweep_file(tmp_path, parameters={"mode": {"values": ["fail", "silent", "nan"]}})
    checked = CliRunner().invoke(app, ["validate", str(path)])
    assert checked.exit_code == 0 and "3 configuration(s) from W&B's grid" in checked.output
    done = CliRunner().invoke(app, ["run", str(path), "--storage", str(tmp_path / "runs")])
    assert done.exit_code == 1, done.output
    table = pd.read_parquet(tmp_path / "runs" / "sweep" / "trials.parquet")
    by_mode = table.set_index("config/mode")
    fail = by_mode.loc["fail"]
    assert (fail["status"], fail["exit_code"], fail["logged"]) == ("error", 1, 0)
    assert "exited with code 1" in fail["error"] and "boom: the script failed" in fail["error"]
    silent = by_mode.loc["silent"]
    assert silent["status"] == "error" and "logged no value of 'loss'" in silent["error"]
    nan = by_mode.loc["nan"]  # NaN, then 1.5 and 1.333...: done, the NaN counted
    assert (nan["status"], nan["exit_code"], nan["nonfinite"], nan["logged"]) == ("done", 0, 1, 3)
    assert nan["best"] == nan["last"] == 4 / 3
    assert "boom: the script failed before wandb.init" in done.output


def test_bayes_runs_run_cap_configurations_that_optuna_suggests(tmp_path):
    parameters = {"q": {"min": 0.0, "max": 1.0}, "w": {"values": [1, 2]}, "c": {"value": "x"}}
    path = sweep_file(tmp_path, method="bayes", run_cap=2, parameters=parameters)
    result = run_file(path, tmp_path)
    assert list(result.table["status"]) == ["done", "done"]
    for config in (s["config"] for s in seen(tmp_path).values()):
        assert 0 <= config["q"] <= 1 and config["w"] in (1, 2) and config["c"] == "x"


def test_the_files_errors_are_found_before_ray_starts(tmp_path):
    path = sweep_file(tmp_path, method="random", parameters={"q": {"values": [1]}})
    with pytest.raises(SweepError, match="run_cap: method random draws until stopped"):
        plan.load(path)
    path = sweep_file(tmp_path, command=["${program}", "${argz}"], parameters={"q": {"value": 1}})
    with pytest.raises(SweepError, match=r"command\[1\]: unknown macro \$\{argz\}"):
        plan.load(path)
    parameters = {"q": {"distribution": "normal"}, "r": {"values": [[1], [2]]}}
    path = sweep_file(tmp_path, method="bayes", run_cap=2, parameters=parameters)
    with pytest.raises(SweepError) as err:
        plan.load(path)
    assert "parameters.q: method bayes: distribution normal has no raysoup search space" in str(
        err.value
    ) and "parameters.r: method bayes: Optuna chooses among numbers" in str(err.value)
    with pytest.raises(SweepError, match="program: no file"):
        plan.load(sweep_file(tmp_path, program="missing.py", parameters={"q": {"value": 1}}))


def test_a_run_file_read_while_it_grows_gives_each_value_once(tmp_path):
    # the script's run (over one 32 KiB block), then its file as polls would find it: cut
    # anywhere, even in a record
    (tmp_path / "params.yaml").write_text(
        trial.param_text({"steps": {"value": 300}, "pause": {"value": 0}})
    )
    sweep_file(tmp_path, parameters={"q": {"value": 1}})
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "script")}
    # as a trial runs it: W&B flushes its run file every quarter second, not every 15 seconds
    env["WANDB__TRANSACTION_LOG_FLUSH_INTERVAL"] = trial.FLUSH_S
    env["WANDB_SWEEP_PARAM_PATH"] = str(tmp_path / "params.yaml")
    (tmp_path / "script").mkdir()
    subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, check=True)
    (whole,) = run_files(tmp_path / "script" / "wandb")
    # W&B's service may write on after the script exits: wait for the exit record, or for the
    # file to stop growing for two seconds (the trial itself gives it five: `trial.DRAIN_S`)
    done, size, still = MetricTail(tmp_path / "script" / "wandb", "x", "loss"), -1, 0.0
    deadline = time.monotonic() + 30
    while not done.exited and still < 2 and time.monotonic() < deadline:
        done.new_values()
        grown = whole.stat().st_size != size
        size, still = whole.stat().st_size, 0.0 if grown else still + 0.1
        time.sleep(0.1)
    expected = [h["loss"] for h in read_run(whole).history.values()]
    data, growing = whole.read_bytes(), tmp_path / "grow" / "offline-run-1-x" / "run-x.wandb"
    assert len(data) > BLOCK and expected == [1 + 1 / (i + 1) for i in range(300)]
    growing.parent.mkdir(parents=True)
    tail, values = MetricTail(tmp_path / "grow", "x", "loss"), []
    for end in [*range(0, len(data), 997), len(data)]:
        growing.write_bytes(data[:end])
        values += tail.new_values()
    assert values == expected


def test_param_file_is_the_text_wandbs_agent_writes(tmp_path):
    from wandb.sdk.lib.config_util import save_config_file_from_dict

    args = {"q": {"value": 1}, "model": {"value": {"w": [1, 2], "name": "é"}}}
    save_config_file_from_dict(str(tmp_path / "theirs.yaml"), args)
    assert trial.param_text(args) == (tmp_path / "theirs.yaml").read_text()
