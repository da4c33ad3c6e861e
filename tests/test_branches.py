"""Conditional spaces (`branches`): each branch is a partial sweep over the base, with its own
values and spaces; the configurations, names, counts and errors without Ray, then a real sweep
on local Ray whose full and LoRA branches search different ranges and soup across seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from ray.tune.search.search_generator import SearchGenerator

import engine
from engine.train import searchers
from sweeps import SweepError, parse_sweep
from sweeps.trials import configurations, short_number
from tests.test_sweep_config import sweep_dict
from tests.test_sweep_run import tiny_sweep

FULL_LR, LORA_LR = (1e-5, 1e-4), (1e-3, 1e-2)
BRANCHES = [
    {"finetune": {"method": "full"}, "train": {"lr": {"loguniform": list(FULL_LR)}}},
    {
        "finetune": {"method": "lora", "lora": {"r": {"grid": [4, 8]}}},
        "train": {"lr": {"loguniform": list(LORA_LR)}},
    },
]


def within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def test_each_branch_draws_its_own_spaces_with_the_values_it_sets():
    sweep = parse_sweep(sweep_dict(branches=BRANCHES, num_samples=3, seeds=[0, 1]))
    configs = configurations(sweep)
    full = [c.values for c in configs if c.values["finetune.method"] == "full"]
    lora = [c.values for c in configs if c.values["finetune.method"] == "lora"]
    assert len(full) == 3 and len(lora) == 6  # 3 draws; 3 draws for each of 2 ranks
    assert all(set(v) == {"finetune.method", "train.lr"} for v in full)
    assert all(within(v["train.lr"], FULL_LR) for v in full)
    assert all(within(v["train.lr"], LORA_LR) for v in lora)
    assert sorted(v["finetune.lora.r"] for v in lora) == [4, 4, 4, 8, 8, 8]
    assert sweep.trial_count() == 9 * 2  # every configuration on both seeds
    # fields in the definition's order, names from what tells configurations apart
    assert list(sweep.search_space()) == ["finetune.method", "finetune.lora.r", "train.lr"]
    labels = [c.label for c in configs]
    assert len(set(labels)) == 9
    assert labels[0].startswith("full/lr=") and labels[3].startswith("lora/r=4/lr=")
    # drawn again, the same configurations (resume, another machine)
    assert [c.values for c in configurations(sweep)] == [c.values for c in configs]


def test_a_trial_of_a_branch_trains_with_its_branchs_settings():
    sweep = parse_sweep(sweep_dict(branches=BRANCHES))
    lora = next(c for c in configurations(sweep) if c.values["finetune.method"] == "lora")
    trial = sweep.for_trial(lora.values)
    assert trial.branches is None and trial.search_space() == {}
    assert (trial.finetune.method, trial.finetune.lora.r) == (
        "lora",
        lora.values["finetune.lora.r"],
    )
    assert trial.train.lr == lora.values["train.lr"]
    base_only = sweep_dict(branches=[{"train": {"lr": 1e-3}}, {"train": {"lr": 2e-3}}])
    assert [c.label for c in configurations(parse_sweep(base_only))] == ["lr=0.001", "lr=0.002"]
    modules = {"finetune": {"method": "lora", "lora": {"target_modules": ["q_proj", "v_proj"]}}}
    listed = parse_sweep(sweep_dict(branches=[{"finetune": {"method": "full"}}, modules]))
    full, lora = configurations(listed)
    assert (full.label, lora.label) == ("full", "lora/target_modules=q_proj+v_proj")
    assert listed.for_trial(lora.values).finetune.lora.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"branches": [{"train": {"lr": {"loguniform": [1e-2, 1e-3]}}}]},
         "branches[0].train.lr: loguniform needs [low, high] with low < high"),
        ({"branches": [{}, {"finetune": {"lorra": {"r": 4}}}]},
         "branches[1].finetune.lorra: unknown key; did you mean `lora`?"),
        ({"branches": [{"data": {"seed": 3}}]}, "branches[0].data: a branch sets only finetune"),
        ({"branches": []}, "branches: give at least one branch"),
        ({"branches": BRANCHES, "search": {"type": "hyperopt"}},
         "branches[1].finetune.lora.r: search.type hyperopt suggests every value itself"),
        ({"branches": BRANCHES, "search": {"type": "optuna"}},
         "branches[1].finetune.lora.r: search.type optuna suggests every value itself"),
    ],
)  # fmt: skip
def test_a_bad_branch_is_named_with_its_field(change, message):
    with pytest.raises(SweepError) as err:
        parse_sweep(sweep_dict(**change))
    assert message in str(err.value)


SEARCHED_BRANCHES = [
    {"finetune": {"method": "full"}, "train": {"lr": {"loguniform": list(FULL_LR)}}},
    {
        "finetune": {"method": "lora", "lora": {"r": {"choice": [4, 8]}}},
        "train": {"lr": {"loguniform": list(LORA_LR)}},
    },
]


@pytest.mark.parametrize("searcher", ["optuna", "hyperopt"])
def test_a_searcher_suggests_a_branch_then_that_branchs_values_and_learns_across_them(
    tmp_path, searcher
):
    sweep = parse_sweep(
        sweep_dict(
            branches=SEARCHED_BRANCHES,
            search={"type": searcher, "startup_trials": 4, "seed": 0},
            seeds=[0, 1],
            num_samples=12,
        )
    )
    assert sweep.trial_count() == 12 * 2  # a searcher's points, not a product of branches
    generator = SearchGenerator(searchers.build(sweep))
    search = generator.searcher
    points = []
    for i in range(24):
        cell = search.suggest(f"t{i}")["trial"]
        values = cell["config"]["values"]
        if cell["seed"] == 0:
            points.append(values)
        else:  # the second seed replicates the point
            assert values == points[-1]
        if values["finetune.method"] == "full":
            assert set(values) == {"finetune.method", "train.lr"} and within(
                values["train.lr"], FULL_LR
            )
            loss = 1.0
        else:
            assert list(values) == ["finetune.method", "finetune.lora.r", "train.lr"]
            assert values["finetune.lora.r"] in (4, 8) and within(values["train.lr"], LORA_LR)
            loss = 3.0
        search.on_trial_complete(f"t{i}", {"eval_loss": loss})
        if i == 11:
            generator.save_to_dir(str(tmp_path), session_str="half")
    methods = [v["finetune.method"] for v in points]
    assert set(methods) == {"full", "lora"}
    # TPE (both searchers') learned that the full branch scores better (a lower loss)
    assert methods[4:].count("full") > methods[4:].count("lora")
    again = SearchGenerator(searchers.build(sweep))
    again.restore_from_dir(str(tmp_path))  # a resumed driver: the branched space pickles too
    assert again.searcher.suggest("t12")["trial"]["config"]["point"] == "p6"


@pytest.fixture(scope="module")
def branched(tmp_path_factory, ray_local):
    sweep = tiny_sweep(
        "branched",
        branches=[
            {"finetune": {"method": "full"}, "train": {"lr": {"loguniform": list(FULL_LR)}}},
            {"finetune": {"method": "lora", "lora": {"r": 8}},
             "train": {"lr": {"loguniform": list(LORA_LR)}}},
        ],
        train={"max_steps": 4, "batch_size": 8, "seq_len": 24, "eval_every": 2},
        data_scale=None,
        seeds=[0, 1],
        merge=[{"type": "soup"}],
    )  # fmt: skip
    del sweep["finetune"]["method"]  # the branches set it
    storage = tmp_path_factory.mktemp("runs")
    return engine.run(parse_sweep(sweep), storage=str(storage), progress=False)


def test_a_branched_sweep_trains_each_branch_and_soups_its_seeds(branched):
    trials = branched.trials
    assert len(trials) == 4 and set(trials["status"]) == {"done"}, trials["error"].tolist()
    by_method = {m: group for m, group in trials.groupby("finetune.method")}
    full, lora = by_method["full"], by_method["lora"]
    assert full["train.lr"].map(lambda v: within(v, FULL_LR)).all()
    assert lora["train.lr"].map(lambda v: within(v, LORA_LR)).all()
    assert full["finetune.lora.r"].isna().all() and (lora["finetune.lora.r"] == 8).all()
    for group in (full, lora):  # seeds replicate one configuration
        assert sorted(group["seed"]) == [0, 1] and group["train.lr"].nunique() == 1
    assert {name.split("/")[0] for name in trials["name"]} == {"full", "lora"}
    # a LoRA trial saved an adapter, a full one the whole model
    adapters = {m: any(f.name.startswith("adapter") for f in _files(row)) for m, row in
                zip(trials["finetune.method"], trials["checkpoint"])}  # fmt: skip
    assert adapters == {"full": False, "lora": True}
    merges = branched.merges
    assert list(merges["status"]) == ["done", "done"], merges["error"].tolist()
    for row in merges.to_dict("records"):
        members = trials.set_index("name").loc[list(row["ingredients"])]
        assert members["finetune.method"].nunique() == 1 and sorted(members["seed"]) == [0, 1]
    # named by what its configuration sets: no field of the other branch
    full_lr = full["train.lr"].iloc[0]
    assert sorted(merges["candidate"]) == [
        f"soup/full/lr={short_number(full_lr)}",
        f"soup/lora/r=8/lr={short_number(lora['train.lr'].iloc[0])}",
    ]
    board = branched.leaderboard()  # both branches' trials, ranked together
    assert set(board["finetune.method"]) == {"full", "lora"} and board["eval_loss"].notna().all()
    assert (branched.run_dir / "report.html").is_file()


def _files(checkpoint: str) -> list[Path]:
    return list(Path(checkpoint).iterdir())


def test_the_trial_table_has_every_branchs_fields(branched):
    columns = pd.read_parquet(branched.run_dir / "trials.parquet").columns
    assert {"finetune.method", "finetune.lora.r", "train.lr"} <= set(columns)
