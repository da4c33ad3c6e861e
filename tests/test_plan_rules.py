"""The rules of merge plans, without files or Ray: axis sizes and values, how many trials a group
holds, plan names and parameter grids, each check's message, and every field of the jobs the
planner makes (names, groups, inputs, skips)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from engine.merge.planner import plan_jobs, task_merge_recipe
from sweeps import SweepError, parse_sweep
from sweeps.plans import axis_sizes, axis_values, check_plans, expected_members, plan_names
from sweeps.trials import group_label


def sweep_of(**extra):
    definition = {
        "name": "rules",
        "model": {"preset": "tiny-random"},
        "data": {"format": "prompt_completion"},
        "tasks": {t: {"train": f"{t}.jsonl"} for t in ("add", "rev", "mul")},
        "train": {"lr": {"grid": [1e-3, 3e-3]}, "warmup_steps": {"randint": [0, 4]}},
        "data_scale": [100, 200, 400],
        "seeds": [0, 1],
        "num_samples": 3,
    }
    definition.update(extra)
    return parse_sweep(definition)


def test_axis_sizes_and_values_count_each_axis():
    sweep = sweep_of()
    assert axis_sizes(sweep) == {
        "task": 3,
        "seed": 2,
        "data_size": 3,
        "train.lr": 2,
        "train.warmup_steps": 0,  # sampled: varies with the `sample` axis
        "sample": 3,
    }
    assert axis_values(sweep) == {
        "task": ["add", "rev", "mul"],
        "seed": [0, 1],
        "data_size": [100, 200, 400],
        "train.lr": [0.001, 0.003],
    }
    # A fraction becomes a count only once the data is prepared: no values to check yet.
    assert axis_values(sweep_of(data_scale=[0.25, 0.5]))["data_size"] == []
    chosen = sweep_of(train={"lr": 1e-3, "schedule": {"choice": ["linear", "cosine"]}})
    assert axis_sizes(chosen)["train.schedule"] == 0  # sampled, like any non-grid space
    plain = sweep_of(data_scale=None, num_samples=1, train={"lr": 1e-3})
    assert axis_sizes(plain) == {"task": 3, "seed": 2, "data_size": 1, "sample": 1}


@pytest.mark.parametrize(
    "plan, members",
    [
        ({"type": "checkpoint_average"}, 1),
        ({"type": "task_merge"}, 3),
        ({"type": "task_merge", "where": {"task": ["add", "rev"]}}, 2),
        ({"type": "soup"}, 2),  # across seeds
        ({"type": "soup", "across": ["seed", "train.lr"]}, 4),
        ({"type": "soup", "across": ["train.warmup_steps"]}, 3),  # sampled: the samples
        ({"type": "soup", "across": ["seed", "train.warmup_steps"]}, 6),
        ({"type": "soup", "across": ["task", "data_size"]}, 9),
        ({"type": "soup", "across": "all"}, 3 * 2 * 3 * 2 * 3),
        ({"type": "soup", "across": "all", "where": {"seed": 0, "task": ["add", "rev"]}}, 36),
    ],
)
def test_a_group_expects_the_trials_that_vary_along_its_axes(plan, members):
    sweep = sweep_of(merge=[plan])
    assert expected_members(sweep.merge[0], sweep) == members


def test_plan_names_number_repeated_types():
    sweep = sweep_of(
        merge=[
            {"type": "soup"},
            {"type": "task_merge"},
            {"type": "soup", "name": "mine"},
            {"type": "soup"},
            {"type": "task_merge"},
        ]
    )
    assert plan_names(sweep.merge) == ["soup", "merge", "mine", "soup3", "merge2"]


def test_a_parameter_grid_crosses_lists_and_keeps_scalars():
    sweep = sweep_of(
        merge=[
            {
                "type": "task_merge",
                "method": "ties",
                "parameters": {"density": [0.2, 0.5], "weight": 1.0, "normalize": [True, False]},
            }
        ]
    )
    assert sweep.merge[0].grid() == [
        {"density": 0.2, "weight": 1.0, "normalize": True},
        {"density": 0.2, "weight": 1.0, "normalize": False},
        {"density": 0.5, "weight": 1.0, "normalize": True},
        {"density": 0.5, "weight": 1.0, "normalize": False},
    ]


@pytest.mark.parametrize(
    "extra, plans, problems",
    [
        ({}, [{"type": "soup", "across": "all"}, {"type": "task_merge"}], []),
        ({}, [{"type": "soup", "across": ["train.warmup_steps"]}], []),
        (
            {"num_samples": 1, "train": {"lr": 1e-3, "warmup_steps": {"randint": [0, 4]}}},
            [{"type": "soup", "across": ["train.warmup_steps"]}],
            [
                "merge[0]: every soup group holds a single trial (the sweep has one value along "
                "['train.warmup_steps']); soup across an axis with several values"
            ],
        ),
        (
            {
                "seeds": [0],
                "tasks": None,
                "data": {"train": "a.jsonl"},
                "data_scale": None,
                "num_samples": 1,
                "train": {"lr": 1e-3},
            },
            [{"type": "soup", "across": "all"}],
            [
                "merge[0]: every soup group holds a single trial (the sweep has one value along "
                "all); soup across an axis with several values"
            ],
        ),
        (
            {},
            [{"type": "soup", "across": ["sample"]}],
            [
                "merge[0].across: 'sample' is not an axis of this sweep; allowed: task, seed, "
                "data_size, train.lr, train.warmup_steps"
            ],
        ),
        (
            {},
            [{"type": "checkpoint_average", "where": {"sample": 1}}],
            [
                "merge[0].where: 'sample' is not an axis of this sweep; allowed: task, seed, "
                "data_size, train.lr, train.warmup_steps"
            ],
        ),
        (
            {},
            [
                {"type": "soup", "where": {"train.warmup_steps": 9, "seed": [0, 7]}},
                {"type": "soup", "name": "b", "where": {"task": "div", "data_size": 300}},
            ],
            [
                "merge[0].where.seed: no trial has 7; the sweep's values: 0, 1",
                "merge[1].where.task: no trial has 'div'; the sweep's values: add, rev, mul",
                "merge[1].where.data_size: no trial has 300; the sweep's values: 100, 200, 400",
            ],
        ),
        (
            {"tasks": {"add": {"train": "a.jsonl"}}},
            [{"type": "task_merge"}, {"type": "task_merge", "name": "x", "where": {"seed": 0}}],
            [
                "merge[0]: task_merge merges task models with the base model and needs a `tasks` "
                "section with at least two tasks",
                "merge[1]: task_merge merges task models with the base model and needs a `tasks` "
                "section with at least two tasks",
            ],
        ),
    ],
)
def test_check_plans_names_every_problem(extra, plans, problems):
    assert check_plans(sweep_of(merge=plans, **extra)) == problems


def test_two_tasks_are_enough_for_a_task_merge():
    sweep = sweep_of(tasks={t: {"train": f"{t}.jsonl"} for t in ("add", "rev")})
    assert (
        check_plans(
            sweep.model_copy(update={"merge": sweep_of(merge=[{"type": "task_merge"}]).merge})
        )
        == []
    )


# --- the planner -----------------------------------------------------------------------------


def trials(sweep, failed=()) -> pd.DataFrame:
    """A finished table of `sweep`'s grid (sampled fields take the sample's index)."""
    rows = []
    for task in sweep.task_names():
        for seed in sweep.seeds:
            for lr in (1e-3, 3e-3):
                tid = f"{task}-{seed}-{lr}"
                rows.append(
                    {
                        "name": tid,
                        "trial_id": tid,
                        "task": task,
                        "seed": seed,
                        "data_size": 100,
                        "train.lr": lr,
                        "eval_loss": 1 / lr + seed,
                        "accuracy": 1 / lr + seed,  # for a metric that is better higher
                        "status": "error" if tid in failed else "done",
                        "checkpoint": f"/c/{tid}/3",
                        "checkpoints": [f"/c/{tid}/{i}" for i in (1, 2, 3)],
                    }
                )
    return pd.DataFrame(rows)


def small_sweep(merge, **extra):
    return sweep_of(
        merge=merge,
        tasks={t: {"train": f"{t}.jsonl"} for t in ("add", "rev")},
        data_scale=[100],
        num_samples=1,
        train={"lr": {"grid": [1e-3, 3e-3]}},
        **extra,
    )


def test_checkpoint_average_jobs():
    sweep = small_sweep([{"type": "checkpoint_average", "select": "last", "k": 2}])
    jobs = plan_jobs(sweep, trials(sweep, failed={"rev-1-0.003"}))
    assert len(jobs) == 7
    job = jobs[0]
    assert job.candidate == "avg/add-0-0.001"
    assert (job.kind, job.plan, job.method, job.greedy) == (
        "checkpoint_average",
        "avg",
        "linear",
        False,
    )
    assert job.ingredients == ["add-0-0.001"] and job.tasks == ["add"]
    assert job.inputs == ["/c/add-0-0.001/2", "/c/add-0-0.001/3"]
    assert job.group == {"trial": "add-0-0.001"} and job.skipped is None
    assert job.describe() == {
        "candidate": "avg/add-0-0.001",
        "kind": "checkpoint_average",
        "plan": "avg",
        "method": "linear",
        "ingredients": ["add-0-0.001"],
        "group": '{"trial": "add-0-0.001"}',
        "parameters": "{}",
    }


def test_soup_jobs_group_by_every_other_axis_and_keep_the_best_top_k():
    sweep = small_sweep(
        [
            {"type": "soup", "method": "greedy"},
            {"type": "soup", "name": "best", "across": ["seed", "train.lr"], "top_k": 3},
        ],
        metric="eval_loss",
        mode="min",
    )
    jobs = {j.candidate: j for j in plan_jobs(sweep, trials(sweep, failed={"rev-1-0.003"}))}
    soup = jobs["soup/add/lr=0.001/n100"]
    assert (soup.kind, soup.plan, soup.greedy, soup.method) == ("soup", "soup", True, "linear")
    assert soup.ingredients == ["add-0-0.001", "add-1-0.001"]
    assert soup.inputs == ["/c/add-0-0.001/3", "/c/add-1-0.001/3"]
    assert soup.tasks == ["add"] and soup.members == 2 and soup.skipped is None
    assert soup.group == {"task": "add", "data_size": 100, "train.lr": 0.001}
    assert json.loads(soup.describe()["group"]) == soup.group  # plain values: JSON
    assert type(soup.group["data_size"]) is int and type(soup.group["train.lr"]) is float
    alone = jobs["soup/rev/lr=0.003/n100"]
    assert alone.ingredients == ["rev-0-0.003"] and alone.members == 1
    assert alone.skipped == "the group has 1 finished trial(s)"
    # Lowest eval_loss first (mode min): the lr 0.003 trials, seed 0 before seed 1.
    best = jobs["best/add/n100"]
    assert best.ingredients == ["add-0-0.003", "add-1-0.003", "add-0-0.001"]
    assert best.members == 4 and not best.greedy
    # Without top_k a group keeps its trials in trial order, whatever their metric.
    by_max = small_sweep([{"type": "soup"}], metric="accuracy")
    first = plan_jobs(by_max, trials(by_max))[0]
    assert first.ingredients == ["add-0-0.001", "add-1-0.001"]
    top = small_sweep(
        sweep.merge and [{"type": "soup", "across": "all", "top_k": 2}],
        metric="accuracy",
    )
    (everything,) = plan_jobs(top, trials(top))
    assert everything.candidate == "soup/all" and everything.group == {}
    assert everything.ingredients == ["add-1-0.001", "rev-1-0.001"]  # highest accuracy
    assert everything.tasks == ["add", "rev"] and everything.members == 8


def test_task_merge_jobs_name_grid_points_and_skip_groups_missing_a_task():
    sweep = small_sweep(
        [
            {"type": "task_merge", "method": "ties", "parameters": {"density": [0.2, 0.5]}},
            {"type": "task_merge", "name": "one", "where": {"task": ["add", "rev"]}},
        ]
    )
    jobs = {j.candidate: j for j in plan_jobs(sweep, trials(sweep, failed={"rev-1-0.003"}))}
    first = jobs["merge/lr=0.001/n100/s0/density=0.2"]
    assert (first.kind, first.plan, first.method) == ("task_merge", "merge", "ties")
    assert first.parameters == {"density": 0.2}
    assert jobs["merge/lr=0.001/n100/s0/density=0.5"].parameters == {"density": 0.5}
    assert first.ingredients == ["add-0-0.001", "rev-0-0.001"]
    assert first.inputs == ["/c/add-0-0.001/3", "/c/rev-0-0.001/3"]
    assert first.tasks == ["add", "rev"] and first.members == 2
    assert first.group == {"data_size": 100, "seed": 0, "train.lr": 0.001}
    assert first.skipped is None
    broken = jobs["merge/lr=0.003/n100/s1/density=0.5"]
    assert broken.skipped == "no finished trial for task(s) rev" and broken.members == 1
    assert "one/lr=0.001/n100/s0" in jobs  # one grid point: no parameters in the name
    assert jobs["one/lr=0.001/n100/s0"].method == "task_arithmetic"
    lonely = trials(sweep)
    (job, *_) = plan_jobs(sweep, lonely[lonely["task"] == "add"])
    assert job.skipped == "no finished trial for task(s) rev"
    three_tasks = sweep_of(
        merge=[{"type": "task_merge"}],
        data_scale=[100],
        num_samples=1,
        train={"lr": {"grid": [1e-3, 3e-3]}},
    )
    table = trials(three_tasks)
    (job, *_) = plan_jobs(three_tasks, table[table["task"] == "add"])
    assert job.skipped == "no finished trial for task(s) mul, rev"
    where = small_sweep([{"type": "task_merge", "where": {"task": "add"}}])
    (job, *_) = plan_jobs(where, trials(where))
    assert job.skipped is None and job.tasks == ["add"]
    three = sweep_of(
        merge=[{"type": "task_merge", "where": {"task": ["add", "rev", "mul"]}}],
        data_scale=[100],
        num_samples=1,
        train={"lr": {"grid": [1e-3, 3e-3]}},
    )
    table = trials(three)
    (job, *_) = plan_jobs(three, table[table["task"] != "mul"])
    assert job.skipped == "no finished trial for task(s) mul"


def test_a_task_merge_recipe_merges_the_task_models_over_the_base():
    assert task_merge_recipe("ties", {"density": 0.5}, "/base", ["/a", "/b"]) == {
        "merge_method": "ties",
        "base_model": "/base",
        "parameters": {"density": 0.5},
        "models": [{"model": "/a"}, {"model": "/b"}],
    }


def test_group_labels_are_short_readable_and_stable():
    sweep = small_sweep([])
    assert group_label(sweep, {}) == "all"
    # Task, searched fields, data size, seed: in the order of trial names, joined by `/`.
    group = {"seed": 1, "data_size": 500, "train.lr": 0.003, "task": "add"}
    assert group_label(sweep, group) == "add/lr=0.003/n500/s1"
    assert group_label(sweep, {"seed": None, "task": "a b/c"}) == "a-b-c"  # a folder name
    assert group_label(sweep, {"task": "?!"}) == "-"
    assert group_label(sweep, {"task": "Add-2"}) == "Add-2"  # capitals are kept
    assert group_label(sweep, {"trial": "add/lr=0.001/s0"}) == "add/lr=0.001/s0"
    # Without a tasks section, the one task is not named.
    single = sweep_of(tasks=None, data={"train": "t.jsonl"}, train={"lr": 0.001}, num_samples=1)
    assert group_label(single, {"task": "default", "seed": 0}) == "s0"
    # Floats keep the digits that tell the sweep's values apart.
    close = sweep_of(train={"lr": {"grid": [0.0012341, 0.0012349]}}, num_samples=1)
    assert group_label(close, {"train.lr": 0.0012341}) == "lr=0.001234"
    assert group_label(close, {"train.lr": 0.0012349}) == "lr=0.001235"


def test_jobs_come_in_the_order_of_their_groups_whatever_the_table_order():
    sweep = small_sweep([{"type": "soup"}, {"type": "task_merge"}])
    table = trials(sweep)
    names = [j.candidate for j in plan_jobs(sweep, table)]
    assert names == [j.candidate for j in plan_jobs(sweep, table.iloc[::-1])]
    assert names[:2] == ["soup/add/lr=0.001/n100", "soup/add/lr=0.003/n100"]


def test_plan_jobs_use_only_finished_trials_that_match_where():
    sweep = small_sweep([{"type": "checkpoint_average", "where": {"seed": 1, "task": "rev"}}])
    jobs = plan_jobs(sweep, trials(sweep, failed={"rev-1-0.003"}))
    assert [j.ingredients for j in jobs] == [["rev-1-0.001"]]
    assert [j.candidate for j in jobs] == ["avg/rev-1-0.001"]


def test_where_lists_the_problems_before_training(tmp_path):
    from engine.preflight import check

    with pytest.raises(SweepError, match=r"merge\[0\]\.where\.seed: no trial has 9"):
        check(small_sweep([{"type": "soup", "where": {"seed": 9}}]))
