"""The candidate leaderboard: every evaluated candidate ranked by its selection score, with its
interval, what it is (task, method, searched values, data size) and each merge's gain over its
ingredients on test (the ranking itself is `sweeps.leaderboard`)."""

from __future__ import annotations

import json

import pandas as pd

from sweeps import Sweep
from sweeps.evaluation import higher_is_better
from sweeps.leaderboard import Ranking, leaderboard, task_winners


def ranking_for(sweep: Sweep) -> Ranking:
    metric = sweep.evaluate.rank_by
    return Ranking(metric, higher_is_better=higher_is_better(metric))


def ingredients_of(merges: pd.DataFrame | None) -> dict[str, list[str]]:
    """Each merge candidate's ingredients (the trials it was made from)."""
    if merges is None or merges.empty:
        return {}
    return {row.candidate: list(row.ingredients) for row in merges.itertuples()}


def candidate_board(
    sweep: Sweep,
    trials: pd.DataFrame,
    merges: pd.DataFrame | None,
    evals: pd.DataFrame | None,
) -> pd.DataFrame | None:
    """Every evaluated candidate ranked by selection score; None without evaluations."""
    if evals is None or evals.empty:
        return None
    details = candidate_details(sweep, trials, merges)
    return leaderboard(evals, ingredients_of(merges), ranking_for(sweep), details)


def winners(sweep: Sweep, evals: pd.DataFrame | None) -> pd.DataFrame | None:
    """Each task's best candidate on its own selection set (None without evaluations)."""
    if evals is None or evals.empty:
        return None
    return task_winners(evals, sweep.task_names(), ranking_for(sweep))


def candidate_details(
    sweep: Sweep, trials: pd.DataFrame, merges: pd.DataFrame | None
) -> pd.DataFrame:
    """What each candidate is, by name: its task, method, searched values, data size, and a
    `flag` when its result cannot be trusted (a trial with a NaN loss)."""
    searched = list(sweep.search_space())
    rows = [{"candidate": "base", "task": None, "method": "base"}]
    for trial in trials.to_dict("records"):
        method = trial.get("finetune.method") or sweep.finetune.method
        rows.append(
            {
                "candidate": trial["name"],
                "task": trial["task"],
                "method": method,
                **{k: trial.get(k) for k in searched},
                "data_size": trial["data_size"],
                "flag": trial.get("flag"),
            }
        )
    for merge in [] if merges is None else merges.to_dict("records"):
        group = json.loads(merge["group"]) if merge.get("group") else {}
        rows.append(
            {
                "candidate": merge["candidate"],
                "task": _merged_task(merge, trials),
                "method": merge["method"],
                **{k: group.get(k) for k in searched},
                "data_size": group.get("data_size"),
            }
        )
    columns = ["candidate", "task", "method", *searched, "data_size", "flag"]
    return pd.DataFrame(rows, columns=columns).drop_duplicates("candidate").set_index("candidate")


def _merged_task(merge: dict, trials: pd.DataFrame) -> str | None:
    """The task of a merge's ingredients, or `a+b` when it merges several tasks."""
    tasks = trials.loc[trials["name"].isin(list(merge["ingredients"])), "task"]
    return "+".join(sorted(set(tasks))) or None
