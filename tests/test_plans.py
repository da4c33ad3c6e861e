"""Merge plans and the task axis: validation before training, and the jobs planned from trials."""

from __future__ import annotations

import pandas as pd
import pytest

from engine.merge.planner import plan_jobs
from engine.preflight import check
from sweeps import SweepError, parse_sweep
from tests.conftest import DEMO_DATA


def two_task_sweep(**extra) -> dict:
    sweep = {
        "name": "pipe",
        "model": {"preset": "tiny-random"},
        "data": {"format": "prompt_completion"},
        "tasks": {
            task: {
                "train": str(DEMO_DATA / task / "train.jsonl"),
                "eval": str(DEMO_DATA / task / "eval.jsonl"),
                "test": str(DEMO_DATA / task / "test.jsonl"),
            }
            for task in ("add", "reverse")
        },
        "train": {"lr": {"grid": [1e-3, 3e-3]}, "max_steps": 4},
        "seeds": [0, 1],
    }
    sweep.update(extra)
    return sweep


def test_tasks_give_each_task_its_files_and_share_the_rest():
    sweep = parse_sweep(two_task_sweep())
    assert sweep.task_names() == ["add", "reverse"]
    data = sweep.task_data("reverse")
    assert data.train.endswith("reverse/train.jsonl") and data.format == "prompt_completion"
    assert parse_sweep(
        {**two_task_sweep(), "tasks": None, "data": {"train": "a.jsonl"}}
    ).task_names() == ["default"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tasks": None}, "give `data.train`, or a `tasks` section"),
        ({"tasks": {"bad name": {"train": "a.jsonl"}}}, "task name 'bad name'"),
        ({"merge": [{"type": "soop"}]}, "merge[0]: Input tag 'soop'"),
        ({"merge": [{"type": "checkpoint_average", "select": "last"}]}, "needs `k`"),
    ],
)
def test_bad_task_or_plan_definitions_name_the_field(change, message):
    with pytest.raises(SweepError) as err:
        parse_sweep(two_task_sweep(**change))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "plans, message",
    [
        (
            [{"type": "soup", "across": ["train.wd"]}],
            "merge[0].across: 'train.wd' is not an axis of this sweep; allowed: task, seed, "
            "data_size, train.lr",
        ),
        (
            [{"type": "soup", "across": ["data_size"]}],
            "merge[0]: every soup group holds a single trial",
        ),
        (
            [{"type": "soup", "name": "x"}, {"type": "checkpoint_average", "name": "x"}],
            "plan names must be distinct",
        ),
    ],
)
def test_plans_are_checked_against_the_sweep_before_training(plans, message):
    with pytest.raises(SweepError) as err:
        check(parse_sweep(two_task_sweep(merge=plans)))
    assert message in str(err.value)


def test_a_task_merge_needs_several_tasks():
    single = two_task_sweep(merge=[{"type": "task_merge"}])
    single["tasks"] = {"add": single["tasks"]["add"]}
    with pytest.raises(SweepError, match="task_merge merges task models with the base model"):
        check(parse_sweep(single))


def test_missing_task_files_are_named_by_task(tmp_path):
    sweep = two_task_sweep()
    sweep["tasks"]["reverse"]["test"] = str(tmp_path / "nope.jsonl")
    with pytest.raises(SweepError, match="tasks.reverse.test: no such file"):
        check(parse_sweep(sweep))


def trials_table(done: set[str] | None = None) -> pd.DataFrame:
    """A finished two-task, two-lr, two-seed sweep's table (paths need not exist to plan)."""
    rows = []
    for task in ("add", "reverse"):
        for lr in (1e-3, 3e-3):
            for seed in (0, 1):
                tid = f"{task}/lr={lr}/s{seed}"
                rows.append(
                    {
                        "name": tid,
                        "trial_id": f"t{len(rows)}",
                        "task": task,
                        "seed": seed,
                        "data_size": None,
                        "train.lr": lr,
                        "eval_loss": lr * 100 + seed,
                        "status": "done" if done is None or tid in done else "error",
                        "checkpoint": f"/ck/{tid}/checkpoint_000002",
                        "checkpoints": [f"/ck/{tid}/checkpoint_00000{i}" for i in range(3)],
                    }
                )
    return pd.DataFrame(rows)


def test_plans_become_jobs_with_their_ingredients():
    sweep = parse_sweep(
        two_task_sweep(
            merge=[
                {"type": "checkpoint_average", "select": "last", "k": 2},
                {"type": "soup", "method": "greedy"},
                {"type": "soup", "name": "best", "across": "all", "top_k": 3},
                {"type": "task_merge", "method": "ties", "parameters": {"density": [0.2, 0.5]}},
            ]
        )
    )
    jobs = {job.candidate: job for job in plan_jobs(sweep, trials_table())}
    average = jobs["avg/add/lr=0.001/s0"]
    assert average.inputs == [
        "/ck/add/lr=0.001/s0/checkpoint_000001",
        "/ck/add/lr=0.001/s0/checkpoint_000002",
    ]
    soups = [j for j in jobs.values() if j.plan == "soup"]
    assert len(soups) == 4 and all(j.greedy and len(j.ingredients) == 2 for j in soups)
    assert {tuple(sorted(j.ingredients)) for j in soups} >= {("add/lr=0.001/s0", "add/lr=0.001/s1")}
    assert jobs["best/all"].ingredients == [
        "add/lr=0.001/s0",
        "reverse/lr=0.001/s0",
        "add/lr=0.003/s0",
    ]
    merges = [j for j in jobs.values() if j.kind == "task_merge"]
    assert len(merges) == 4 * 2
    assert {j.parameters["density"] for j in merges} == {0.2, 0.5}
    assert all(j.tasks == ["add", "reverse"] for j in merges)
    assert all(j.skipped is None for j in jobs.values())


def test_failed_trials_leave_groups_that_are_skipped_with_a_reason():
    sweep = parse_sweep(two_task_sweep(merge=[{"type": "soup"}, {"type": "task_merge"}]))
    table = trials_table(done={"add/lr=0.001/s0", "add/lr=0.001/s1", "reverse/lr=0.003/s0"})
    jobs = plan_jobs(sweep, table)
    reasons = {j.candidate: j.skipped for j in jobs}
    assert reasons["soup/add/lr=0.001"] is None
    assert "1 finished trial" in reasons["soup/reverse/lr=0.003"]
    assert any(r and "no finished trial for task(s) reverse" in r for r in reasons.values())


def test_a_group_whose_trials_all_failed_is_a_skipped_row():
    sweep = parse_sweep(two_task_sweep(merge=[{"type": "soup"}, {"type": "task_merge"}]))
    table = trials_table(done={"add/lr=0.001/s0", "add/lr=0.001/s1", "reverse/lr=0.003/s0"})
    reasons = {j.candidate: j.skipped for j in plan_jobs(sweep, table)}
    assert "0 finished trial" in reasons["soup/add/lr=0.003"]
    assert "0 finished trial" in reasons["soup/reverse/lr=0.001"]
    assert "no finished trial for task(s) add, reverse" in reasons["merge/lr=0.003/s1"]
    everything_failed = plan_jobs(sweep, trials_table(done=set()))
    assert len(everything_failed) == len(plan_jobs(sweep, trials_table()))
    assert all(job.skipped for job in everything_failed)


def test_where_limits_a_plan_to_some_trials():
    sweep = parse_sweep(
        two_task_sweep(merge=[{"type": "task_merge", "where": {"train.lr": 0.003, "seed": [1]}}])
    )
    jobs = plan_jobs(sweep, trials_table())
    assert [j.ingredients for j in jobs] == [["add/lr=0.003/s1", "reverse/lr=0.003/s1"]]
    with pytest.raises(SweepError, match=r"merge\[0\].where: 'lr' is not an axis"):
        check(parse_sweep(two_task_sweep(merge=[{"type": "soup", "where": {"lr": 1}}])))


def test_a_where_value_no_trial_has_is_refused():
    sweep = parse_sweep(two_task_sweep(merge=[{"type": "soup", "where": {"train.lr": 0.01}}]))
    with pytest.raises(
        SweepError,
        match=r"merge\[0\].where.train.lr: no trial has 0.01; "
        r"the sweep's values: 0.001, 0.003",
    ):
        check(sweep)


def test_sets_without_a_selection_set_are_refused(tmp_path):
    sweep = two_task_sweep()
    for task in sweep["tasks"].values():
        del task["eval"]
    with pytest.raises(SweepError, match="evaluate: no selection set"):
        check(parse_sweep(sweep))


def test_checkpoint_averages_read_the_checkpoints_their_selection_names():
    """`every: n` counts back from the final checkpoint (on 4 checkpoints, counting from the
    first would give the other two); `last: k` reads the k newest."""
    sweep = parse_sweep(
        two_task_sweep(
            merge=[
                {"type": "checkpoint_average", "name": "every2", "select": "every", "n": 2},
                {"type": "checkpoint_average", "name": "last3", "select": "last", "k": 3},
                {"type": "checkpoint_average", "name": "every9", "select": "every", "n": 9},
            ]
        )
    )
    table = trials_table()
    shuffled = [[f"/ck/{t}/checkpoint_00000{i}" for i in (3, 0, 2, 1)] for t in table["trial_id"]]
    table["checkpoints"] = shuffled
    jobs = {job.candidate: job for job in plan_jobs(sweep, table)}
    steps = lambda job: [int(path[-1]) for path in job.inputs]  # noqa: E731
    assert steps(jobs["every2/add/lr=0.001/s0"]) == [1, 3]
    assert steps(jobs["last3/add/lr=0.001/s0"]) == [1, 2, 3]
    assert jobs["every2/add/lr=0.001/s0"].skipped is None
    assert steps(jobs["every9/add/lr=0.001/s0"]) == [3]
    assert "kept 1 checkpoint" in jobs["every9/add/lr=0.001/s0"].skipped


@pytest.mark.parametrize(
    "keep, plans, kept",
    [
        (1, [], 1),
        (None, [{"type": "soup"}], None),
        (1, [{"type": "checkpoint_average", "select": "last", "k": 3}], 3),
        (5, [{"type": "checkpoint_average", "select": "last", "k": 3}], 5),
        (1, [{"type": "checkpoint_average", "select": "every", "n": 2}], None),
        (1, [{"type": "checkpoint_average"}], None),
        (
            2,
            [
                {"type": "checkpoint_average", "name": "x", "select": "last", "k": 4},
                {"type": "checkpoint_average", "name": "y", "select": "last", "k": 3},
            ],
            4,
        ),
    ],
)
def test_trials_keep_every_checkpoint_a_plan_reads(keep, plans, kept):
    """`checkpoint.keep` is raised to what `last: k` reads; `all` and `every` read them all."""
    from engine.train.experiment import checkpoints_to_keep

    sweep = parse_sweep(two_task_sweep(checkpoint={"every": 1, "keep": keep}, merge=plans))
    assert checkpoints_to_keep(sweep) == kept
