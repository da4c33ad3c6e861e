"""The data-scale axis and the scaling-law analysis: laws, held-out error, bootstrap, predictions,
grouping, the plot, and a real sweep that writes `scaling.json` and shows it in `raysoup report`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweeps import SweepError, parse_sweep
from sweeps.laws import LAWS
from sweeps.plots import scaling_plot
from sweeps.scale import ScalingConfig
from sweeps.scaling import analyse, fit_curve
from tests.conftest import DEMO_DATA

SIZES = np.geomspace(100, 100_000, 12)
TRUTH = {"power": [1.5, 40.0, 0.5], "score": [0.5, 0.05, 2.0], "loglinear": [0.2, 0.05]}


def sweep_dict(**extra) -> dict:
    return {
        "name": "scale",
        "model": {"preset": "tiny-random"},
        "data": {"train": "train.jsonl"},
        **extra,
    }


def noisy(law: str, sizes: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    exact = LAWS[law].predict(sizes, np.array(TRUTH[law]))
    return exact * (1 + noise * rng.standard_normal(len(sizes)))


def table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"trial_id": str(i), "status": "done", "seed": 0, **row} for i, row in enumerate(rows)]
    )


@pytest.mark.parametrize("law", sorted(LAWS))
def test_each_law_recovers_known_parameters_from_noisy_points(law):
    fitted = LAWS[law].fit(SIZES, noisy(law, SIZES, 0.002, seed=0))
    assert fitted == pytest.approx(TRUTH[law], rel=0.05)


def test_power_law_fit_starts_anywhere_and_keeps_every_parameter_positive():
    # A steep curve far from the default starting points still fits.
    truth = np.array([0.2, 5000.0, 1.2])
    fitted = LAWS["power"].fit(SIZES, LAWS["power"].predict(SIZES, truth))
    assert fitted == pytest.approx(truth, rel=1e-3)
    flat = LAWS["power"].fit(SIZES, np.full(len(SIZES), 2.0))
    assert (flat > 0).all()


def test_held_out_error_is_the_miss_on_the_largest_size():
    law = LAWS["power"]
    sizes = np.array([100.0, 300, 1000, 3000, 10000])
    values = law.predict(sizes, np.array(TRUTH["power"]))
    values[-1] += 0.05  # the largest size does better than the law of the smaller ones says
    curve = fit_curve(sizes, values, law, ScalingConfig(holdout=1))
    held = curve["holdout"]
    assert held["fit_sizes"] == [100, 300, 1000, 3000]
    [error] = held["errors"]
    assert error["data_size"] == 10000
    assert error["predicted"] == pytest.approx(values[-1] - 0.05, rel=1e-4)
    assert error["abs_error"] == pytest.approx(0.05, rel=1e-3)
    assert held["mean_abs_error"] == pytest.approx(0.05, rel=1e-3)


def test_bootstrap_intervals_contain_the_truth_in_a_seeded_case():
    law = LAWS["power"]
    sizes = np.repeat(np.geomspace(100, 30_000, 6), 5)  # 5 seeds at each of 6 sizes
    values = noisy("power", sizes, 0.01, seed=3)
    curve = fit_curve(
        sizes,
        values,
        law,
        ScalingConfig(bootstrap=300, seed=1, confidence=0.95, predict_at=[300_000]),
    )
    assert curve["status"] == "ok" and curve["message"] is None
    for name, true in zip(law.params, TRUTH["power"]):
        p = curve["params"][name]
        assert p["low"] < true < p["high"], (name, p)
        assert p["low"] <= p["value"] <= p["high"]
    [prediction] = curve["predictions"]
    truth = float(law.predict(300_000, np.array(TRUTH["power"])))
    assert prediction["low"] < truth < prediction["high"] and prediction["extrapolated"]


def test_one_seed_gives_no_intervals_and_says_why():
    curve = fit_curve(SIZES, noisy("power", SIZES, 0.01, seed=0), LAWS["power"], ScalingConfig())
    assert curve["params"]["E"]["low"] is None
    assert "one seed" in curve["message"]


def test_predict_and_inverse_predict():
    law = LAWS["power"]
    values = law.predict(SIZES, np.array(TRUTH["power"]))
    at = 1_000_000
    want = float(law.predict(at, np.array(TRUTH["power"])))
    curve = fit_curve(SIZES, values, law, ScalingConfig(predict_at=[at], target=want))
    assert curve["predictions"][0]["value"] == pytest.approx(want, rel=1e-4)
    assert curve["target"]["data_size"] == pytest.approx(at, rel=1e-2)
    below = fit_curve(SIZES, values, law, ScalingConfig(target=1.4))  # E is 1.5
    assert below["target"]["data_size"] is None
    assert "below the fitted floor E" in below["target"]["reason"]


@pytest.mark.parametrize("law", ["score", "loglinear"])
def test_inverse_predict_of_the_score_laws(law):
    params = np.array(TRUTH[law])
    size, reason = LAWS[law].invert(float(LAWS[law].predict(5000.0, params)), params)
    assert size == pytest.approx(5000.0) and reason is None
    flat = np.array([1.0, 0.0] + ([1.0] if law == "score" else []))
    size, reason = LAWS[law].invert(2.0, flat)
    assert size is None and "flat" in reason


def test_too_few_sizes_says_so_instead_of_numbers():
    sizes = np.array([100.0, 1000.0, 10000.0])
    curve = fit_curve(sizes, np.array([3.0, 2.0, 1.6]), LAWS["power"], ScalingConfig())
    assert curve["status"] == "too_few_sizes"
    assert "3 distinct data size(s)" in curve["message"] and "at least 4" in curve["message"]
    assert "params" not in curve and "predictions" not in curve
    ok = fit_curve(sizes, np.array([3.0, 2.0, 1.6]), LAWS["loglinear"], ScalingConfig())
    assert ok["status"] == "ok"


def test_a_law_that_cannot_fit_the_values_says_why():
    curve = fit_curve(SIZES, -np.ones(len(SIZES)), LAWS["power"], ScalingConfig())
    assert curve["status"] == "failed" and "positive values" in curve["message"]


@pytest.mark.parametrize(
    "given, sizes",
    [
        ({"log_range": [100, 10000], "points": 5}, [100, 316, 1000, 3162, 10000]),
        ({"log_range": [10, 12], "points": 5}, [10, 11, 12]),  # rounding merges sizes
        ({"log_range": [0.01, 1.0], "points": 3}, [0.01, 0.1, 1.0]),
        ([1000, 100], [100, 1000]),
    ],
)
def test_data_scale_spellings_resolve_to_sorted_distinct_sizes(given, sizes):
    assert parse_sweep(sweep_dict(data_scale=given)).data_scale == sizes


@pytest.mark.parametrize(
    "given, message",
    [
        (
            {"log_range": [1000, 100], "points": 3},
            "data_scale.log_range: needs [smallest, largest]",
        ),
        ({"log_range": [0.1, 1], "points": 3}, "data_scale.log_range: give example counts"),
        ({"log_range": [0, 100], "points": 3}, "data_scale.log_range: give example counts"),
        ({"log_range": [10, 100]}, "data_scale.points: required field is missing"),
        ({"log_range": [10, 100], "points": 1}, "data_scale.points: Input should be greater"),
        ({"log_range": [10, 100], "point": 3}, "data_scale.point: unknown key"),
        ([100, 0.5], "data_scale: give example counts"),
        ([100, 100], "data_scale: data sizes must be distinct"),
    ],
)
def test_bad_data_scale_names_the_field(given, message):
    with pytest.raises(SweepError, match=re.escape(message)):
        parse_sweep(sweep_dict(data_scale=given))


def test_the_law_follows_the_metric_unless_set():
    assert ScalingConfig().law_for("eval_loss") == "power"
    assert ScalingConfig().law_for("eval_ppl") == "power"
    assert ScalingConfig().law_for("accuracy") == "loglinear"
    assert ScalingConfig(law="score").law_for("eval_loss") == "score"
    with pytest.raises(SweepError, match="scaling.law"):
        parse_sweep(sweep_dict(scaling={"law": "exp"}))


def test_one_curve_per_task_and_swept_value_from_finished_trials_only():
    sweep = parse_sweep(
        sweep_dict(
            finetune={"method": {"grid": ["full", "lora"]}}, data_scale=[100, 300, 1000, 3000]
        )
    )
    rows = [
        {
            "task": task,
            "finetune.method": method,
            "data_size": d,
            "eval_loss": 1 + (2 if method == "lora" else 1) * d**-0.3 + (task == "b"),
        }
        for task in ("a", "b")
        for method in ("full", "lora")
        for d in sweep.data_scale
    ]
    rows += [
        {
            "task": "a",
            "finetune.method": "full",
            "data_size": 10_000,
            "eval_loss": 0.1,
            "status": "error",
        }
    ]
    result = analyse(table(rows), sweep)
    labels = [g["label"] for g in result["groups"]]
    assert labels == [f"task={t}, finetune.method={m}" for t in "ab" for m in ("full", "lora")]
    first = result["groups"][0]
    assert first["group"] == {"task": "a", "finetune.method": "full"}
    assert [p["data_size"] for p in first["points"]] == [100, 300, 1000, 3000]
    assert all(g["status"] == "ok" for g in result["groups"])
    json.dumps(result, allow_nan=False)  # plain JSON, no NaN


def test_a_missing_metric_is_reported_not_fitted():
    sweep = parse_sweep(sweep_dict(data_scale=[1, 2], scaling={"metric": "accuracy"}))
    result = analyse(table([{"data_size": 1, "eval_loss": 1.0}]), sweep)
    assert result["groups"] == [] and "no column 'accuracy'" in result["message"]


def test_the_plot_is_written(tmp_path):
    sweep = parse_sweep(
        sweep_dict(data_scale=[100, 300, 1000, 3000], seeds=[0, 1], scaling={"bootstrap": 20})
    )
    rows = [
        {"data_size": d, "seed": s, "eval_loss": 1 + d**-0.3 + 0.01 * s}
        for d in sweep.data_scale
        for s in sweep.seeds
    ]
    path = scaling_plot(analyse(table(rows), sweep), tmp_path / "plots" / "scaling.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.fixture(scope="module")
def sweep_run(ray_local, tmp_path_factory):
    import engine

    definition = parse_sweep(
        {
            "name": "tiny-scale",
            "model": {"preset": "tiny-random"},
            "data": {
                "train": str(DEMO_DATA / "add" / "train.jsonl"),
                "format": "prompt_completion",
            },
            "train": {"lr": 3e-3, "epochs": 1, "batch_size": 8, "seq_len": 24, "eval_every": 100},
            "data_scale": {"log_range": [40, 320], "points": 4},
            "checkpoint": {"every": 100, "keep": 1},
            "scaling": {"predict_at": [1280], "target": 1.0},
        }
    )
    return engine.run(definition, storage=str(tmp_path_factory.mktemp("runs")), progress=False)


def test_a_real_sweep_writes_the_scaling_fit_and_plot(sweep_run):
    trials = sweep_run.trials.sort_values("data_size")
    assert trials["data_size"].tolist() == [40, 80, 160, 320]
    assert set(trials["status"]) == {"done"}, trials["error"].tolist()
    assert trials["examples_seen"].tolist() == [40, 80, 160, 320]  # one epoch each
    assert trials["tokens_seen"].is_monotonic_increasing and trials["tokens_seen"].min() > 40
    root = Path(sweep_run.run_dir)
    saved = json.loads((root / "scaling.json").read_text())
    assert saved == sweep_run.scaling()
    [group] = saved["groups"]
    assert saved["law"] == "power" and group["status"] == "ok", group["message"]
    assert set(group["params"]) == {"E", "A", "alpha"}
    assert group["holdout"]["errors"][0]["data_size"] == 320
    assert group["predictions"][0]["data_size"] == 1280
    assert all(math.isfinite(p["value"]) and p["value"] > 0 for p in group["params"].values())
    assert (root / saved["plot"]).is_file()


def test_report_shows_the_fitted_law_and_the_plot(sweep_run):
    from typer.testing import CliRunner

    from engine.cli import app

    out = CliRunner().invoke(app, ["report", str(sweep_run.run_dir)], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "eval_loss ~ E + A * D^-alpha" in out.output
    assert "* D^-" in out.output and "D=1,280" in out.output, out.output
    assert "plots/scaling.png" in out.output
