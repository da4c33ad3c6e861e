"""The candidate leaderboard: every evaluated candidate ranked by its selection score, with each
merge's gain over its ingredients on test (the ranking itself is `sweeps.leaderboard`)."""

from __future__ import annotations

import pandas as pd

from sweeps import Sweep
from sweeps.evaluation import higher_is_better
from sweeps.leaderboard import Ranking, leaderboard


def ranking_for(sweep: Sweep) -> Ranking:
    metric = sweep.evaluate.rank_by
    return Ranking(metric, higher_is_better=higher_is_better(metric))


def ingredients_of(merges: pd.DataFrame | None) -> dict[str, list[str]]:
    """Each merge candidate's ingredients (the trials it was made from)."""
    if merges is None or merges.empty:
        return {}
    return {row.candidate: list(row.ingredients) for row in merges.itertuples()}


def candidate_board(
    sweep: Sweep, merges: pd.DataFrame | None, evals: pd.DataFrame | None
) -> pd.DataFrame | None:
    """Every evaluated candidate ranked by selection score; None without evaluations."""
    if evals is None or evals.empty:
        return None
    return leaderboard(evals, ingredients_of(merges), ranking_for(sweep))
