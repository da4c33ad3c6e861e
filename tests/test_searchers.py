"""Learning searchers (optuna, hyperopt, bohb): each suggested point trained on every seed, the
searcher told the mean over seeds, its state saved and restored with Tune's; bad input."""

from __future__ import annotations

import importlib.util
import math
import pickle
import shutil
from collections import deque
from pathlib import Path

import pandas as pd
import pytest
from ray.tune.search import Searcher
from ray.tune.search.search_generator import SearchGenerator

import engine
from engine.train import records, searchers
from engine.train.axes import cells
from engine.train.experiment import param_space
from sweeps import SweepError, parse_sweep
from sweeps.space import LogUniform
from sweeps.trials import configurations, short_number
from tests.test_resume import _finished_trials, _raysoup, _results, killed_after
from tests.test_sweep_config import sweep_dict
from tests.test_sweep_run import tiny_sweep

SPACE = {"train__lr": {"loguniform": [1e-4, 1e-2]}, "train__batch_size": {"choice": [4, 8]}}
BRANCHES_SEARCHED = [
    {"finetune": {"method": "full"}},
    {"finetune": {"method": "lora", "lora": {"r": {"choice": [4, 8]}}}},
]


def searched(kind: str, **extra) -> dict:
    if kind == "bohb":  # its own HyperBand, pausing trials at reports (every 50 steps)
        extra = {"scheduler": {"type": "hyperband", "max_t": 200}, "checkpoint__every": 50} | extra
    return sweep_dict(search={"type": kind, "startup_trials": 2, "seed": 3}, **SPACE, **extra)


def searched_run(storage: Path, name: str, lr: list[float], every: int, **extra):
    """A searched sweep of the tiny model's full fine-tuning over 4 steps, run to its end."""
    train = {"lr": {"loguniform": lr}, "max_steps": 4, "batch_size": 8, "seq_len": 24}
    sweep = tiny_sweep(
        name,
        finetune={"method": "full"},
        train=train | {"eval_every": every},
        data_scale=None,
        **extra,
    )
    return engine.run(parse_sweep(sweep), storage=str(storage), progress=False)


@pytest.fixture(scope="module")
def optuna_run(tmp_path_factory, ray_local):
    return searched_run(
        tmp_path_factory.mktemp("runs"),
        "optuna",
        [1e-4, 1e-2],
        every=2,
        seeds=[0, 1],
        num_samples=3,
        search={"type": "optuna", "startup_trials": 2, "seed": 1},
        merge=[{"type": "soup"}],
    )


@pytest.fixture(scope="module")
def bohb_run(tmp_path_factory, ray_local):
    """BOHB over 4 points, 4 steps, a report and a checkpoint at each: its HyperBand's first
    bracket holds the 4 trials, with budgets 1, 2 and 4 steps (keeping half at each)."""
    return searched_run(
        tmp_path_factory.mktemp("runs"),
        "bohb",
        [1e-4, 3e-2],
        every=1,
        num_samples=4,
        checkpoint={"every": 1, "keep": None},
        search={"type": "bohb", "seed": 0},
        scheduler={"type": "hyperband", "reduction_factor": 2},
    )


# About 25 s on 2 cores: with --runslow, for the suite's time. Without it, the pieces are
# checked apart: each result told at its budget (here), the pause through Tune's
# ConcurrencyLimiter, the result that stops its trial and the brackets' saved state
# (tests/test_schedulers.py); a trial started again in its folder continuing from its newest
# checkpoint (tests/faults/test_trial_faults.py: a killed trial's retry).
@pytest.mark.slow
def test_bohb_halves_its_bracket_at_each_budget_and_paused_trials_continue(bohb_run):
    trials = bohb_run.trials.set_index("name")
    assert sorted(trials["status"]) == ["done", "stopped", "stopped", "stopped"]
    stopped = trials[trials["status"] == "stopped"]
    assert set(stopped["stopped_by"]) == {"hyperband"}
    assert sorted(stopped["stopped_at"]) == [1, 1, 2]  # half stop at 1 step, half the rest at 2
    assert sorted(trials["steps"]) == [1, 1, 2, 4]  # 8 steps in all; a grid would take 16
    best = trials[trials["status"] == "done"].index[0]
    at_one = {name: _loss_at(trials.loc[name, "checkpoints"], 1) for name in trials.index}
    assert at_one[best] <= sorted(at_one.values())[1]  # it was in the better half at step 1
    # A trial paused at a budget continues from the checkpoint of that report, not from 0.
    resumed = [
        attempt["resumed_from"]
        for path in trials["path"]
        for attempt in records.read_attempts(Path(path))[1:]
    ]
    assert resumed and set(resumed) <= {1, 2}
    learned = _searcher_state(Path(bohb_run.run_dir) / "tune")["bohber"].losses
    assert {budget: len(losses) for budget, losses in learned.items()} == {1: 4, 2: 2, 4: 1}


def _loss_at(checkpoints: list[str], step: int) -> float:
    found = [records.checkpoint_info(Path(c)) for c in checkpoints]
    return next(info["eval_loss"] for info in found if info["step"] == step)


def test_each_suggested_point_is_trained_on_every_seed(optuna_run):
    trials = optuna_run.trials
    assert set(trials["status"]) == {"done"}, trials["error"].tolist()
    assert sorted(set(trials["point"])) == ["p0", "p1", "p2"]
    for _, point in trials.groupby("point"):
        assert sorted(point["seed"]) == [0, 1]
        assert point["train.lr"].nunique() == 1  # the same configuration on both seeds
    assert trials["train.lr"].between(1e-4, 1e-2).all()
    assert trials["train.lr"].nunique() == 3


def test_the_searcher_learned_each_points_mean_over_seeds(optuna_run):
    state = _searcher_state(Path(optuna_run.run_dir) / "tune")
    learned = {t.params["train.lr"]: t.value for t in state["_ot_study"].trials}
    assert len(learned) == 3
    for _, point in optuna_run.trials.groupby("point"):
        lr = point["train.lr"].iloc[0]
        assert learned[lr] == pytest.approx(point["eval_loss"].mean(), rel=1e-9)


def test_a_soup_across_seeds_is_made_per_point(optuna_run):
    soups = optuna_run.merges
    assert sorted(soups["candidate"]) == sorted(
        f"soup/{p}/lr={lr}" for p, lr in _labels(optuna_run.trials)
    )
    assert all(len(ingredients) == 2 for ingredients in soups["ingredients"])


def test_the_report_shows_the_best_score_as_points_finished(optuna_run):
    page = (Path(optuna_run.run_dir) / "report.html").read_text()
    assert "How the search spent its compute" in page


def _labels(trials):
    first = trials.drop_duplicates("point")
    return [(p, short_number(lr)) for p, lr in zip(first["point"], first["train.lr"])]


def _searcher_state(tune_dir: Path) -> dict:
    newest = sorted(tune_dir.glob("searcher-state-*.pkl"))[-1]  # named by time: last is newest
    with open(newest, "rb") as handle:
        return pickle.load(handle)


@pytest.mark.parametrize("kind", ["optuna", "hyperopt", "bohb"])
def test_points_come_from_the_space_and_each_runs_on_every_replicate(kind):
    sweep = parse_sweep(searched(kind, seeds=[0, 1], data_scale=[40, 160], num_samples=3))
    search = searchers.build(sweep)
    cells = [search.suggest(f"t{i}")["trial"] for i in range(8)]
    points = {}
    for cell in cells:
        points.setdefault(cell["config"]["point"], []).append(cell)
    assert list(points) == ["p0", "p1"]
    for replicas in points.values():  # every seed on every data size, one configuration
        assert sorted((c["data_size"], c["seed"]) for c in replicas) == [
            (40, 0), (40, 1), (160, 0), (160, 1)
        ]  # fmt: skip
        values = replicas[0]["config"]["values"]
        assert all(c["config"]["values"] == values for c in replicas)
        assert 1e-4 <= values["train.lr"] <= 1e-2 and values["train.batch_size"] in (4, 8)
        assert type(values["train.batch_size"]) is int  # plain Python, never numpy


def test_a_point_is_scored_by_the_mean_at_the_largest_data_size():
    sweep = parse_sweep(searched("optuna", seeds=[0, 1, 2], data_scale=[40, 160]))
    inner = _Recorder()
    search = searchers.Replicates(inner, sweep)
    cells = {f"t{i}": search.suggest(f"t{i}")["trial"] for i in range(6)}
    scores = {(40, 0): 9.0, (40, 1): 9.0, (40, 2): 9.0, (160, 0): 2.0, (160, 1): 4.0}
    for trial_id, cell in cells.items():
        key = (cell["data_size"], cell["seed"])
        failed = key not in scores  # (160, 2) fails: left out of the mean
        search.on_trial_complete(trial_id, {"eval_loss": scores.get(key)}, error=failed)
        assert inner.told == ([] if trial_id != "t5" else [("p0", {"eval_loss": 3.0}, False)])


def test_a_state_saved_before_queued_cells_carried_their_point_still_restores():
    search = searchers.build(parse_sweep(searched("optuna", seeds=[0, 1])))
    cell = search.suggest("t0")["trial"]
    older = {**search.get_state(), "queue": deque([{**cell, "seed": 1}])}  # a bare cell
    search.set_state(older)
    assert search.suggest("t1") == {"trial": {**cell, "seed": 1}}
    assert search.point_of["t1"] == 0


def test_a_point_whose_scored_replicates_all_failed_is_told_as_failed():
    search = searchers.Replicates(_Recorder(), parse_sweep(searched("optuna", seeds=[0, 1])))
    for trial_id in ("a", "b"):
        search.suggest(trial_id)
    search.on_trial_complete("a", {"eval_loss": math.nan})
    search.on_trial_complete("b", None, error=True)
    assert search.searcher.told == [("p0", None, True)]
    search.on_trial_complete("b", {"eval_loss": 2.0})  # retried by a resume: told once only
    assert search.searcher.told == [("p0", None, True)]


def test_the_searchers_state_survives_a_new_driver(tmp_path):
    """Tune saves the searcher with its experiment and restores it into the searcher of the
    resumed sweep: points keep their numbers and values, the scores already told stay told,
    and no point is suggested twice."""
    sweep = parse_sweep(searched("optuna", seeds=[0, 1], num_samples=4))
    first = SearchGenerator(searchers.build(sweep))
    given = {f"t{i}": first.searcher.suggest(f"t{i}")["trial"] for i in range(3)}
    for trial_id in ("t0", "t1"):
        first.searcher.on_trial_complete(trial_id, {"eval_loss": 1.0})
    first.save_to_dir(str(tmp_path), session_str="before")

    again = SearchGenerator(searchers.build(sweep))
    again.restore_from_dir(str(tmp_path))
    search = again.searcher
    assert search.suggest("t3") == {"trial": {**given["t2"], "seed": 1}}  # p1's second seed
    later = [search.suggest(f"t{i}")["trial"]["config"] for i in range(4, 8)]
    assert [c["point"] for c in later] == ["p2", "p2", "p3", "p3"]
    values = [given["t0"]["config"]["values"], given["t2"]["config"]["values"]]
    values += [c["values"] for c in later[::2]]
    assert len({tuple(v.items()) for v in values}) == 4  # no configuration suggested twice
    study = search.searcher._ot_study
    assert [t.value for t in study.trials if t.value is not None] == [1.0]  # p0, told before
    search.on_trial_complete("t2", {"eval_loss": 3.0})
    search.on_trial_complete("t3", {"eval_loss": 5.0})
    assert [t.value for t in study.trials if t.value is not None] == [1.0, 4.0]


class _Recorder(Searcher):
    """A searcher that suggests one fixed point and records what it is told."""

    def __init__(self):
        super().__init__(metric="eval_loss", mode="min")
        self.told = []

    def suggest(self, trial_id):
        return {"train.lr": 1e-3, "train.batch_size": 8}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append((trial_id, result, error))


def test_a_learning_sweep_counts_its_trials_and_keeps_its_spaces():
    sweep = parse_sweep(searched("hyperopt", seeds=[0, 1], num_samples=5))
    assert sweep.trial_count() == 10
    assert isinstance(sweep.search_space()["train.lr"], LogUniform)
    assert sweep.for_trial({"train.lr": 1e-3, "train.batch_size": 4}).search.type == "grid"


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"search": {"type": "smac"}}, "unknown search type 'smac'; known: grid, random, optuna"),
        (
            {"search": {"type": "bohb"}, **SPACE},
            "search.type: bohb learns from every trial's result at each budget of its own "
            "HyperBand; set scheduler: {type: hyperband}",
        ),
        (
            {"scheduler": {"type": "hyperband", "max_t": 100}, "checkpoint__every": 50},
            "scheduler.type: hyperband is synchronous HyperBand, offered as the scheduler of "
            "search.type bohb; with search.type grid, use asha",
        ),
        (
            {"search": {"type": "bohb"}, "scheduler": {"type": "hyperband"}, **SPACE},
            "scheduler.max_t: HyperBand needs its largest budget",
        ),
        (
            {"search": {"type": "bohb"}, "scheduler": {"type": "hyperband", "max_t": 30}, **SPACE},
            "scheduler.max_t: 30 ends trials before their first report (50 step",
        ),
        (
            {"search": {"type": "bohb"}, "scheduler": {"type": "hyperband", "max_t": 100}, **SPACE},
            "checkpoint.every: hyperband pauses a trial at a report and continues it later from "
            "the checkpoint of that report, so checkpoint.every must equal train.eval_every (50)",
        ),
        (
            {
                "search": {"type": "bohb"},
                "scheduler": {"type": "hyperband", "max_t": 100},
                "checkpoint__every": 50,
                "branches": BRANCHES_SEARCHED,
            },
            "branches: search.type bohb searches one space",
        ),
        (
            {"search": {"type": "bohb", "startup_trials": 0}},
            "search.bohb.startup_trials",
        ),
        (
            {
                "search": {"type": "bohb", "max_concurrent": 2},
                "scheduler": {"type": "hyperband", "max_t": 100},
                "checkpoint__every": 50,
                **SPACE,
            },
            "search.max_concurrent: hyperband pauses trials, and Tune counts a paused trial "
            "against this cap until it ends",
        ),
        (
            {"scheduler": {"type": "hyperband", "reduction_factor": 1}},
            "scheduler.hyperband.reduction_factor",
        ),
        ({"search": {"seed": 1}}, "unknown search type None"),
        ({"search": {"type": "grid", "seed": 1}}, "search.grid.seed: unknown key"),
        (
            {"search": {"type": "optuna"}, "train__lr": {"grid": [1e-4, 1e-3]}},
            "search.type: optuna suggests every value itself, but train.lr holds a grid",
        ),
        ({"search": {"type": "hyperopt"}}, "search.type: hyperopt has nothing to search"),
        ({"search": {"type": "optuna", "startup_trials": 0}}, "search.optuna.startup_trials"),
        ({"search": {"type": "optuna", "max_concurrent": 0}}, "search.optuna.max_concurrent"),
        ({"scheduler": {"type": "pb2"}}, "scheduler.pb2.perturbation_interval"),
        ({"scheduler": {"type": "pbt"}}, "scheduler.pbt.perturbation_interval"),
    ],
)
def test_bad_search_settings_name_the_field(overrides, message):
    with pytest.raises(SweepError) as err:
        parse_sweep(sweep_dict(**overrides))
    assert message in str(err.value)


def test_a_missing_searcher_package_is_named(monkeypatch):
    find_spec = importlib.util.find_spec
    missing = lambda name: None if name == "optuna" else find_spec(name)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", missing)
    with pytest.raises(SweepError) as err:
        parse_sweep(searched("optuna"))
    assert "search.type: optuna needs the package 'optuna', which is not installed" in str(
        err.value
    )


# About a minute on 2 cores: with --runslow. Without it, the save and restore through Tune's
# SearchGenerator above checks the same state.
@pytest.mark.slow
def test_a_killed_sweep_resumes_with_its_searchers_state(tmp_path):
    """The driver killed (SIGKILL, with the local Ray it started) once three trials finished:
    the resumed sweep keeps the points suggested before, trains the rest of them, and the
    searcher ends with every point told once; no finished trial is trained again."""
    sweep = tiny_sweep(
        "killed",
        finetune={"method": "full"},
        train={"lr": {"loguniform": [1e-4, 1e-2]}, "max_steps": 4, "seq_len": 24},
        data_scale=None,
        seeds=[0, 1],
        num_samples=4,
        search={"type": "optuna", "startup_trials": 2},
        resources={"max_concurrent": 1},
    )
    run_dir = killed_after(tmp_path, sweep, finished=3)
    before = _results(run_dir / "tune")
    finished = _finished_trials(run_dir / "tune")
    assert 3 <= len(finished) < 8, "the sweep finished before it could be killed"

    resumed = _raysoup("resume", str(run_dir))
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 8 and set(trials["status"]) == {"done"}, trials["error"].tolist()
    assert sorted(set(trials["point"])) == ["p0", "p1", "p2", "p3"]
    assert trials.groupby("point")["train.lr"].nunique().eq(1).all()
    assert trials["train.lr"].nunique() == 4  # no configuration suggested twice
    after = _results(run_dir / "tune")
    for folder in (d for d in before if d.split("-", 1)[0] in finished):
        assert after[folder] == before[folder], f"finished trial {folder} was trained again"
    study = _searcher_state(run_dir / "tune")["_ot_study"]
    means = trials.groupby("train.lr")["eval_loss"].mean()
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    for told in study.trials:
        assert told.value == pytest.approx(means[told.params["train.lr"]], rel=1e-9)


def test_random_search_draws_from_its_own_seed():
    space = {"train__lr": {"loguniform": [1e-4, 1e-2]}, "num_samples": 4, "data__seed": 7}

    def drawn(search):
        return [c.values for c in configurations(parse_sweep(sweep_dict(search=search, **space)))]

    grid = drawn({"type": "grid"})
    assert drawn({"type": "random"}) == grid  # no seed of its own: data.seed's draws
    other = drawn({"type": "random", "seed": 8})
    assert other != grid and other == drawn({"type": "random", "seed": 8})
    assert all(1e-4 <= c["train.lr"] <= 1e-2 for c in other)


def test_a_shuffled_order_starts_whole_configurations_in_an_order_drawn_from_its_seed():
    grid = {
        "train__lr": {"grid": [1e-4, 1e-3, 1e-2]},
        "train__warmup_steps": {"grid": [0, 10]},
        "seeds": [0, 1],
    }

    def started(**order):
        sweep = parse_sweep(sweep_dict(search={"type": "grid", **order}, **grid))
        return [
            (c["config"]["label"], c["seed"]) for c in param_space(sweep)["trial"]["grid_search"]
        ]

    given = started()
    assert given == [
        (c["config"]["label"], c["seed"]) for c in cells(parse_sweep(sweep_dict(**grid)))
    ]
    assert [label for label, _ in given[:4]] == ["lr=0.0001/warmup_steps=0"] * 2 + [
        "lr=0.0001/warmup_steps=10"
    ] * 2  # the grid as listed: the smallest learning rate first
    shuffled = started(order="shuffled", order_seed=3)
    assert sorted(shuffled) == sorted(given) and shuffled != given
    # each configuration's seeds start together, one after the other
    assert all(shuffled[i][0] == shuffled[i + 1][0] for i in range(0, len(shuffled), 2))
    assert [seed for _, seed in shuffled] == [0, 1] * 6
    assert started(order="shuffled", order_seed=3) == shuffled  # again on resume
    assert started(order="shuffled", order_seed=4) != shuffled


def told(search: searchers.Replicates) -> list[tuple[dict, float]]:
    """The points a searcher was told the score of, as configuration values and scores, read
    back through the searcher's own space (HyperOpt keeps a choice's index, and each branch's
    values under its own labels)."""
    if search.kind == "optuna":
        trials = search.searcher._ot_study.trials
        found = [(dict(t.params), t.value) for t in trials if t.state.is_finished()]
    else:
        import hyperopt

        space = search.searcher.domain.expr
        found = [
            (
                hyperopt.space_eval(space, {k: v[0] for k, v in t["misc"]["vals"].items() if v}),
                t["result"]["loss"],
            )
            for t in search.searcher._hpopt_trials.trials
            if t["state"] == hyperopt.JOB_STATE_DONE
        ]
    if search.branches is not None:
        found = [(search.branches.values(values), score) for values, score in found]
    return found


@pytest.mark.parametrize("kind", ["optuna", "hyperopt"])
@pytest.mark.parametrize("branched", [False, True])
def test_a_search_rebuilt_from_its_trials_keeps_its_points_and_tells_the_finished_ones(
    kind, branched
):
    """As the folders of a killed sweep tell it: p0's two seeds finished, p1's first seed
    finished and its second was interrupted, p2's first seed was interrupted and its second
    never started."""
    extra = {"branches": BRANCHES_SEARCHED} if branched else {}
    sweep = parse_sweep(searched(kind, seeds=[0, 1], num_samples=6, **extra))
    first = searchers.build(sweep)
    cells = [first.suggest(f"t{i}")["trial"] for i in range(5)]
    assert [c["config"]["point"] for c in cells] == ["p0", "p0", "p1", "p1", "p2"]
    started = [
        searchers.Started(cells[0], "a", True, 1.0),
        searchers.Started(cells[1], "b", True, 3.0),
        searchers.Started(cells[2], "c", True, 5.0),
        searchers.Started(cells[3], "d", False, None),
        searchers.Started(cells[4], "e", False, None),
    ]
    search = searchers.rebuilt(sweep, started)
    values = [cells[i]["config"]["values"] for i in (0, 2, 4)]  # p0, p1, p2
    assert told(search) == [(values[0], 2.0)]  # p0's mean, told to the new searcher
    # The cells left come first, under their points: p1's second seed, then p2's two seeds.
    again = [search.suggest(f"n{i}")["trial"] for i in range(3)]
    assert again == [cells[3], cells[4], {**cells[4], "seed": 1}]
    search.on_trial_complete("n0", {"eval_loss": 7.0})  # p1 ends: (5 + 7) / 2
    assert told(search) == [(values[0], 2.0), (values[1], 6.0)]
    search.on_trial_complete("n1", {"eval_loss": 1.0})
    search.on_trial_complete("n2", None, error=True)  # p2: its one score left
    assert told(search) == [(values[0], 2.0), (values[1], 6.0), (values[2], 1.0)]
    # New points past the startup draws, from a model of the three told: none a repeat
    new = [search.suggest(f"m{i}")["trial"]["config"] for i in range(6)][::2]  # 2 seeds each
    assert [c["point"] for c in new] == ["p3", "p4", "p5"]
    assert all(c["values"] not in values for c in new)
    for i in range(6):  # the searcher learns from them as from its own
        search.on_trial_complete(f"m{i}", {"eval_loss": 4.0})
    assert told(search)[3:] == [(c["values"], 4.0) for c in new]


def bohb_values(search: searchers.Replicates, budget: int) -> list[tuple[dict, float]]:
    """What BOHB was told at `budget`: each result's configuration and loss."""
    import ConfigSpace

    bohber = search.searcher.bohber
    space = bohber.configspace
    configs = [dict(ConfigSpace.Configuration(space, vector=v)) for v in bohber.configs[budget]]
    return list(zip(configs, bohber.losses[budget]))


def test_bohb_learns_each_scored_replicates_result_at_every_budget():
    """Each result its HyperBand marks with a budget, from the replicates at the largest data
    size, is one observation of the point's values there; results between budgets, and those
    at smaller data sizes, are not told."""
    sweep = parse_sweep(searched("bohb", seeds=[0, 1], data_scale=[40, 160], metric="accuracy"))
    search = searchers.build(sweep)
    cells = {f"t{i}": search.suggest(f"t{i}")["trial"] for i in range(4)}
    values = cells["t0"]["config"]["values"]
    for i, trial_id in enumerate(cells):
        search.on_trial_result(trial_id, {"accuracy": 0.9, "step": 25})  # between budgets
        at = {"step": 50, "hyperband_info": {"budget": 50}}
        search.on_trial_result(trial_id, {"accuracy": 0.1 * i, **at})
    scored = [0.1 * i for i, c in enumerate(cells.values()) if c["data_size"] == 160]
    assert len(scored) == 2
    # BOHB minimises: for accuracy (higher wins), each loss is minus the accuracy
    assert bohb_values(search, 50) == [(values, -score) for score in scored]
    for trial_id in cells:
        search.on_trial_complete(trial_id, {"accuracy": 0.5})
    assert "p0" not in search.searcher.trial_to_params  # the point ended once, for BOHB too
    scored_id = next(t for t, c in cells.items() if c["data_size"] == 160)
    search.on_trial_result(scored_id, {"accuracy": 1.0, **at})  # trained again by a resume
    assert bohb_values(search, 50) == [(values, -score) for score in scored]  # not told


def test_a_rebuilt_bohb_search_is_told_each_finished_points_mean_at_its_largest_budget():
    sweep = parse_sweep(searched("bohb", seeds=[0, 1], num_samples=4))
    first = searchers.build(sweep)
    cells = [first.suggest(f"t{i}")["trial"] for i in range(4)]
    started = [
        searchers.Started(cells[0], "a", True, 1.0),
        searchers.Started(cells[1], "b", True, 3.0),
        searchers.Started(cells[2], "c", True, 5.0),
        searchers.Started(cells[3], "d", False, None),
    ]
    search = searchers.rebuilt(sweep, started)
    values = [cells[0]["config"]["values"], cells[2]["config"]["values"]]
    assert bohb_values(search, 200) == [(values[0], 2.0)]  # p0's mean, at max_t
    assert search.suggest("n0")["trial"] == cells[3]  # p1's second seed goes on
    search.on_trial_result("n0", {"eval_loss": 1.0, "hyperband_info": {"budget": 50}})
    assert 50 not in search.searcher.bohber.losses  # BOHB never suggested p1: no budgets
    search.on_trial_complete("n0", {"eval_loss": 7.0})  # p1 ends: (5 + 7) / 2
    assert bohb_values(search, 200) == [(values[0], 2.0), (values[1], 6.0)]
    new = search.suggest("m0")["trial"]["config"]
    assert new["point"] == "p2" and new["values"] not in values
    search.on_trial_result("m0", {"eval_loss": 4.0, "hyperband_info": {"budget": 50}})
    assert bohb_values(search, 50) == [(new["values"], 4.0)]  # its own point: learned


def test_a_hyperopt_search_is_rebuilt_when_tunes_files_are_gone(ray_local, tmp_path):
    """No refusal: a HyperOpt sweep with no Tune state left starts a rebuilt experiment."""
    from engine.core.rundir import RunDir
    from engine.train import experiment

    (tmp_path / "tune").mkdir()
    tuner = experiment.tuner(
        parse_sweep(searched("hyperopt")), "m", RunDir(tmp_path), {}, [], "rebuild"
    )
    assert tuner is not None


def test_an_optuna_sweep_is_rebuilt_from_its_trial_folders(optuna_run, tmp_path):
    """The finished optuna sweep, as a killed driver with cut Tune files would leave it: the
    last point's trials never started and the second point's second seed stopped at step 2.
    `--rebuild-state` trains only what is missing, keeps the points' numbers and values, and
    the new study is told every point's mean."""
    run_dir = tmp_path / "optuna"
    shutil.copytree(optuna_run.run_dir, run_dir)
    before = pd.read_parquet(run_dir / "trials.parquet").set_index("name")
    tune_dir = run_dir / "tune"
    for folder in tune_dir.iterdir():
        name = records.recorded_name(folder) if folder.is_dir() else None
        if name is None:
            continue
        point = before.loc[name, "point"]
        if point == "p2":
            shutil.rmtree(folder)
        elif point == "p1" and before.loc[name, "seed"] == 1:
            shutil.rmtree(folder / "checkpoint_000004")
    for state_file in [p for p in tune_dir.iterdir() if p.is_file()]:
        state_file.unlink()  # no Tune state left
    result = engine.resume(str(run_dir), progress=False, rebuild_state=True)
    trials = result.trials.set_index("name")
    assert set(trials["status"]) == {"done"} and len(trials) == 6, trials["error"].tolist()
    kept = before[before["point"] != "p2"]
    for name, row in kept.iterrows():
        assert trials.loc[name, "train.lr"] == row["train.lr"]
        retrained = row["point"] == "p1" and row["seed"] == 1
        assert trials.loc[name, "attempts"] == row["attempts"] + retrained, name
        if not retrained:
            assert trials.loc[name, "eval_loss"] == row["eval_loss"]
    assert sorted(set(trials["point"])) == ["p0", "p1", "p2"]
    assert trials["train.lr"].nunique() == 3  # p2 suggested anew, not a repeat
    study = _searcher_state(tune_dir)["_ot_study"]
    means = trials.groupby("point")["eval_loss"].mean()
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(means), rel=1e-9)
