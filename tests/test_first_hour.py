"""What a new user meets in the first hour: data checks before Ray starts, seeds that replicate
one configuration, readable names, scores with intervals, a leaderboard that says which model to
use, and exit codes that tell a failed sweep from a finished one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import engine
from engine.cli import app
from engine.preflight import check
from sweeps import SweepError, parse_sweep
from sweeps.intervals import of_mean, wilson
from sweeps.leaderboard import Ranking, leaderboard, recommendation, task_winners
from sweeps.trials import configurations, labels, trial_name
from tests.conftest import DEMO_DATA, REPO
from tests.failing import FAILS_ON_WORDS

ADD = DEMO_DATA / "add"


def sweep_dict(tmp_path: Path, **extra) -> dict:
    sweep = {
        "name": "first",
        "model": {"preset": "tiny-random"},
        "data": {
            "train": str(ADD / "train.jsonl"),
            "eval": str(ADD / "eval.jsonl"),
            "format": "prompt_completion",
        },
        "train": {"lr": 3e-3, "max_steps": 2, "batch_size": 8, "seq_len": 32, "eval_every": 2},
        "storage": str(tmp_path),
    }
    for key, value in extra.items():
        sweep[key] = {**sweep[key], **value} if isinstance(value, dict) and key in sweep else value
    return sweep


# -- checks before Ray starts -------------------------------------------------------------


def test_cut_off_completions_are_refused_before_ray_starts(tmp_path):
    import ray

    with pytest.raises(SweepError, match=r"train.seq_len: 8 tokens cut their end off 2000 of"):
        check(parse_sweep(sweep_dict(tmp_path, train={"seq_len": 8})))
    assert not ray.is_initialized()


def test_no_trained_token_is_refused_and_left_truncation_keeps_completions(tmp_path):
    with pytest.raises(SweepError, match="leave no trained token in any example"):
        check(parse_sweep(sweep_dict(tmp_path, train={"seq_len": 1})))
    found = check(parse_sweep(sweep_dict(tmp_path, train={"seq_len": 8, "truncation": "left"})))
    assert not found.warnings
    assert any("longest 12; train.seq_len 8" in note for note in found.notes)


def test_a_few_cut_examples_are_a_warning(tmp_path):
    found = check(parse_sweep(sweep_dict(tmp_path, train={"seq_len": 8, "truncation": "warn"})))
    assert any("lose tokens they are trained on" in w for w in found.warnings)


def test_sizes_above_what_selection_keeps_name_the_task(tmp_path):
    rows = (ADD / "train.jsonl").read_text().splitlines()[:100]
    (tmp_path / "dup.jsonl").write_text("\n".join(rows + rows[:40]) + "\n")
    sweep = sweep_dict(tmp_path, data={"select": [{"type": "exact_dedup"}]})
    sweep["tasks"] = {
        "plain": {"train": str(ADD / "train.jsonl"), "eval": str(ADD / "eval.jsonl")},
        "dups": {"train": str(tmp_path / "dup.jsonl"), "eval": str(ADD / "eval.jsonl")},
    }
    sweep["data_scale"] = [120]
    with pytest.raises(SweepError) as err:
        check(parse_sweep(sweep))
    assert "120 examples asked, but task 'dups' has 100 to train on (140 rows, 100 after" in str(
        err.value
    )
    assert "'plain'" not in str(err.value)


def test_examples_shared_by_train_and_test_are_counted(tmp_path):
    rows = (ADD / "train.jsonl").read_text().splitlines()
    (tmp_path / "test.jsonl").write_text("\n".join(rows[:10]) + "\n")
    found = check(parse_sweep(sweep_dict(tmp_path, data={"test": str(tmp_path / "test.jsonl")})))
    assert any(
        "10 example(s) of the test file also stand in the training data" in w
        for w in found.warnings
    )


def test_too_few_sizes_for_a_scaling_fit_are_said_before_training(tmp_path):
    found = check(parse_sweep(sweep_dict(tmp_path, data_scale=[100, 200])))
    assert any("no scaling fit will be made" in w for w in found.warnings)


# -- replicates and names ----------------------------------------------------------------


def test_seeds_tasks_and_sizes_replicate_each_sampled_configuration(tmp_path):
    sweep = parse_sweep(
        sweep_dict(
            tmp_path, train={"lr": {"loguniform": [3e-4, 3e-3]}}, seeds=[0, 1], num_samples=3
        )
    )
    drawn = configurations(sweep)
    assert len(drawn) == 3 and len({c.values["train.lr"] for c in drawn}) == 3
    assert all(3e-4 <= c.values["train.lr"] <= 3e-3 for c in drawn)
    assert [c.values for c in configurations(sweep)] == [c.values for c in drawn]  # stable
    names = [trial_name(sweep, "default", c.label, None, s) for c in drawn for s in sweep.seeds]
    assert len(set(names)) == 6 and all(n.startswith("lr=") for n in names)
    assert sweep.trial_count() == len(names)


def test_labels_round_floats_and_keep_them_apart():
    assert labels([{"lr": 0.001}, {"lr": 0.003}]) == ["lr=0.001", "lr=0.003"]
    assert labels([{"lr": 0.00123456}, {"lr": 0.00543}]) == ["lr=0.00123", "lr=0.00543"]
    assert labels([{"lr": 0.0012341}, {"lr": 0.0012349}]) == ["lr=0.001234", "lr=0.001235"]
    assert labels([{"m": "lora", "r": 4}, {"m": "full", "r": 4}]) == ["lora", "full"]
    assert labels([{"lr": 0.1}, {"lr": 0.1}]) == ["", "r1"]  # a repeated draw stays apart


def test_eval_names_models_by_name_or_a_short_label(tmp_path):
    from engine.evaluate.pool import candidates_from_paths

    paths = [tmp_path / "a" / "checkpoint_000004", tmp_path / "b" / "checkpoint_000004"]
    paths += [tmp_path / "x" / "merged", tmp_path / "y" / "merged"]
    found = [c.name for c in candidates_from_paths([str(p) for p in paths])]
    assert found == ["a/checkpoint_000004", "b/checkpoint_000004", "x/merged", "y/merged"]
    named = candidates_from_paths([str(paths[0])], names=["mine"])
    assert [c.name for c in named] == ["mine"]
    with pytest.raises(SweepError, match="--name: 2 name"):
        candidates_from_paths([str(paths[0])], names=["a", "b"])


# -- intervals and the leaderboard -------------------------------------------------------


def test_intervals_against_a_hand_computation():
    # Wilson's interval of 7 successes in 20, from its formula by hand: (0.1812, 0.5671).
    interval = wilson(7, 20)
    assert interval.low == pytest.approx(0.18119, abs=1e-4)
    assert interval.high == pytest.approx(0.56715, abs=1e-4)
    assert of_mean([1.0] * 7 + [0.0] * 13) == interval
    # The normal interval of the mean of 1, 2, 3, 4: 2.5 +- 1.96 * sd / 2 with sd = 1.29099.
    normal = of_mean([1.0, 2.0, 3.0, 4.0])
    assert normal.stderr == pytest.approx(1.29099 / 2, rel=1e-4)
    assert (normal.low, normal.high) == pytest.approx((2.5 - 1.26517, 2.5 + 1.26517), rel=1e-4)


def evals_of(scores: dict[str, dict[str, float]], n: int = 40) -> pd.DataFrame:
    """Accuracy rows as the pool writes them: each set's Wilson interval from its score."""
    rows = []
    for candidate, by_set in scores.items():
        for eval_set, value in by_set.items():
            spread = wilson(round(value * n), n)
            rows.append(
                {"candidate": candidate, "kind": "trial", "eval_set": eval_set,
                 "split": "test" if eval_set.endswith("-test") else "selection",
                 "metric": "accuracy", "value": value, "stderr": spread.stderr,
                 "low": spread.low, "high": spread.high, "n": n, "status": "ok",
                 "path": f"/models/{candidate}"}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_the_leaderboard_marks_ties_and_names_each_tasks_winner():
    ranking = Ranking("accuracy", higher_is_better=True)
    evals = evals_of(
        {
            "specialist": {"a": 1.0, "b": 0.25, "a-test": 0.95, "b-test": 0.25},
            "generalist": {"a": 0.7, "b": 0.7, "a-test": 0.65, "b-test": 0.7},
            "close": {"a": 0.65, "b": 0.65, "a-test": 0.6, "b-test": 0.6},
            "poor": {"a": 0.2, "b": 0.2, "a-test": 0.2, "b-test": 0.2},
        }
    )
    board = leaderboard(evals, {}, ranking)
    assert list(board["candidate"]) == ["generalist", "close", "specialist", "poor"]
    assert dict(zip(board["candidate"], board["tied"])) == {
        "generalist": False,
        "close": True,
        "specialist": True,
        "poor": False,
    }
    winners = task_winners(evals, ["a", "b"], ranking).set_index("task")
    assert winners.loc["a", "candidate"] == "specialist" and winners.loc["a", "test"] == 0.95
    assert winners.loc["b", "candidate"] == "generalist"
    lines = recommendation(board, winners.reset_index(), ranking)
    assert lines[0].startswith("Use this model: generalist (/models/generalist)")
    assert "For task a: specialist (/models/specialist)" in "\n".join(lines)


def test_a_flagged_candidate_never_ranks_first():
    evals = evals_of({"nan-trial": {"a": 0.9}, "sound": {"a": 0.5}})
    details = pd.DataFrame(
        {"flag": ["eval_loss not finite", None]}, index=["nan-trial", "sound"]
    ).rename_axis("candidate")
    board = leaderboard(evals, {}, Ranking("accuracy", True), details)
    assert list(board["candidate"]) == ["sound", "nan-trial"]


# -- a sweep with a sampled lr, two seeds and a soup across them -------------------------


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, ray_local):
    storage = tmp_path_factory.mktemp("sampled")
    sweep = sweep_dict(
        storage,
        train={"lr": {"loguniform": [3e-4, 3e-3]}, "seq_len": 24},
        data={"test": str(ADD / "test.jsonl")},
        seeds=[0, 1],
        num_samples=2,
        metric="accuracy",
        merge=[{"type": "soup", "method": "greedy"}],
        evaluate={"rank_by": "accuracy", "batch_size": 16},
    )
    return engine.run(parse_sweep(sweep), progress=False)


def test_seeds_share_the_sampled_lr_and_soups_find_their_groups(sampled):
    trials = sampled.trials
    assert len(trials) == 4 and set(trials["status"]) == {"done"}
    assert trials.groupby("train.lr")["seed"].apply(sorted).tolist() == [[0, 1], [0, 1]]
    merges = sampled.merges
    assert list(merges["status"]) == ["done", "done"], merges["error"].tolist()
    for row in merges.to_dict("records"):
        members = trials.set_index("name").loc[list(row["ingredients"])]
        assert members["train.lr"].nunique() == 1 and sorted(members["seed"]) == [0, 1]


def test_trials_report_an_evaluation_metric_as_the_evaluate_stage_computes_it(sampled):
    """`metric: accuracy`: each trial scores its selection set as it trains; its final value is
    the evaluate stage's accuracy of the same checkpoint, and trials rank by it (highest
    first)."""
    trials = sampled.trials.set_index("name")
    evals = sampled.evals
    stage = evals[(evals["metric"] == "accuracy") & (evals["eval_set"] == "default")]
    stage = stage.set_index("candidate")["value"]
    for name, accuracy in trials["accuracy"].items():
        assert accuracy == pytest.approx(stage[name], abs=1e-9), name
    assert sampled.leaderboard()["accuracy"].is_monotonic_decreasing


def test_greedy_soups_choose_by_the_evaluation_metric(sampled):
    """A greedy soup starts from its best ingredient by `metric` (accuracy: the highest)."""
    trials = sampled.trials.set_index("name")
    for row in sampled.merges.to_dict("records"):
        scores = trials.loc[list(row["ingredients"]), "accuracy"]
        assert trials.loc[row["kept"][0], "accuracy"] == scores.max()


def test_a_mode_against_the_metric_is_refused(tmp_path):
    with pytest.raises(SweepError, match="mode: 'min' ranks accuracy backwards"):
        parse_sweep(sweep_dict(tmp_path, metric="accuracy", mode="min"))
    assert parse_sweep(sweep_dict(tmp_path, metric="accuracy")).direction() == "max"
    assert parse_sweep(sweep_dict(tmp_path)).direction() == "min"


def test_an_evaluation_metric_needs_a_selection_file_with_its_fields(tmp_path):
    sweep = sweep_dict(tmp_path, metric="accuracy")
    del sweep["data"]["eval"]
    with pytest.raises(SweepError, match="metric: accuracy is computed on each task's selection"):
        check(parse_sweep(sweep))


def test_names_are_readable_and_used_everywhere(sampled):
    names = list(sampled.trials["name"])
    assert len(set(names)) == 4
    for name in names:
        lr, seed = name.split("/")
        assert lr.startswith("lr=") and len(lr.removeprefix("lr=").replace("0.", "")) <= 6
        assert seed in ("s0", "s1")
    assert set(names) <= set(sampled.evals["candidate"])
    assert all(m.startswith("soup/lr=") for m in sampled.merges["candidate"])
    assert all(Path(p).is_dir() for p in sampled.merges["path"])
    markdown = (Path(sampled.run_dir) / "leaderboard.md").read_text()
    assert all(name in markdown for name in names)


def test_best_is_the_leaderboards_first_with_its_path(sampled):
    board = sampled.candidates()
    best = sampled.best()
    assert best["candidate"] == board["candidate"].iloc[0]
    assert Path(best["path"]).is_dir()
    assert best["selection_low"] <= best["selection"] <= best["selection_high"]
    markdown = (Path(sampled.run_dir) / "leaderboard.md").read_text()
    assert f"Use this model: {best['candidate']} ({best['path']})" in markdown


# -- exit codes --------------------------------------------------------------------------


def test_run_exits_1_when_every_trial_fails(tmp_path, sampled):
    # `sampled` keeps this module's Ray running, so the command reuses it. The metric raises on
    # the reverse task's word answers: its trial fails at run time, after every check. (Some
    # trials failing and others finishing: tests/test_wandb_tracking.py.)
    sweep = sweep_dict(tmp_path, metric=FAILS_ON_WORDS, resources={"max_failures": 0})
    del sweep["data"]["train"], sweep["data"]["eval"]
    reverse = {split: str(DEMO_DATA / "reverse" / f"{split}.jsonl") for split in ("train", "eval")}
    sweep["name"], sweep["tasks"] = "all-fail", {"reverse": reverse}
    path = tmp_path / "fails.yaml"
    path.write_text(json.dumps(sweep))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 1, result.output
    assert "trial reverse failed" in result.output


def test_ctrl_c_exits_130_and_starts_no_further_stage(tmp_path):
    sweep = sweep_dict(
        tmp_path,
        train={"max_steps": 400, "eval_every": 100},
        seeds=[0, 1],
        merge=[{"type": "soup"}],
    )
    path = tmp_path / "long.yaml"
    path.write_text(json.dumps(sweep))
    raysoup = Path(sys.executable).parent / "raysoup"
    proc = subprocess.Popen(
        [str(raysoup), "run", str(path)], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )  # fmt: skip
    run_dir = tmp_path / "first"
    deadline = time.monotonic() + 240
    while not list((run_dir / "tune").glob("*/params.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 130, output
    assert f"raysoup resume {run_dir}" in output
    assert not (run_dir / "merges.parquet").exists() and not (run_dir / "evals.parquet").exists()
    # The stopped trials, for `raysoup resume`.
    assert (run_dir / "trials.parquet").is_file(), output


# -- the report in a real browser --------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def browser():
    """Headless Chromium driven by its WebDriver (Debian's chromium and chromium-driver)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,2400",
    ):
        options.add_argument(flag)  # fmt: skip
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def test_the_report_reads_in_a_browser(sampled, browser, tmp_path):
    """Every image loads, no script error is logged, the answer comes first, and a click on a
    column's header sorts the table by it; a screenshot is kept in the test's folder."""
    browser.get((Path(sampled.run_dir) / "report.html").as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])"
    )
    assert len(images) >= 3 and all(ok for _, ok in images), images
    assert all(not alt.endswith(".png") and " " in alt for alt, _ in images)  # titles in words
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    headings = browser.execute_script(
        "return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)"
    )
    assert headings[0] == "Use this model" and "Leaderboard" in headings
    at = browser.execute_script(
        "return Array.from(document.querySelector('table.sortable').tHead.rows[0].cells)"
        ".findIndex(c => c.textContent === 'test')"
    )
    scores = (
        "return Array.from(document.querySelector('table.sortable').tBodies[0].rows)"
        f".map(r => parseFloat(r.cells[{at}].textContent))"
    )
    click = f"document.querySelector('table.sortable').tHead.rows[0].cells[{at}].click()"
    browser.execute_script(click)
    ascending = browser.execute_script(scores)
    browser.execute_script(click)
    descending = browser.execute_script(scores)
    assert len(ascending) > 3 and ascending == sorted(ascending)
    assert descending == sorted(ascending, reverse=True)
    assert browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000
