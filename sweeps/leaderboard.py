"""One leaderboard of every candidate (trials, merges, the base), from `evals.parquet`.

A candidate's selection score is its metric averaged over the `selection` eval sets and its test
score the same over the `test` sets; candidates are ranked by selection score only, so the test
column is an honest estimate of the chosen model. Each merge is compared with its ingredients
(the trials it was made from): the gain over the best and over the mean ingredient, positive when
the merge is better, on the test sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

KINDS = ("trial", "checkpoint_average", "soup", "task_merge", "base")


@dataclass(frozen=True)
class Ranking:
    """Which metric ranks candidates and whether higher is better."""

    metric: str
    higher_is_better: bool

    def sign(self) -> int:
        """+1 when higher is better: `sign * (a - b) > 0` means a beats b."""
        return 1 if self.higher_is_better else -1


def candidate_scores(evals: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per candidate: its kind and mean `metric` over selection and over test sets."""
    ok = evals[(evals["metric"] == metric) & (evals["status"] == "ok")]
    scores = ok.pivot_table(index="candidate", columns="split", values="value", aggfunc="mean")
    scores = scores.reindex(columns=["selection", "test"])
    kinds = evals.drop_duplicates("candidate").set_index("candidate")["kind"]
    frame = pd.DataFrame({"candidate": kinds.index, "kind": kinds.values})
    return frame.join(scores, on="candidate")


def set_scores(evals: pd.DataFrame, metric: str, order: list[str] | None = None) -> pd.DataFrame:
    """`metric` of every candidate on each set: one row per candidate (in `order` when given),
    one column per set named `<set> (<split>)`, selection sets first."""
    ok = evals[(evals["metric"] == metric) & (evals["status"] == "ok")]
    table = ok.pivot_table(index="candidate", columns=["split", "eval_set"], values="value")
    splits = [s for s in ("selection", "test") if s in table.columns.get_level_values(0)]
    table = table.reindex(columns=[c for s in splits for c in table.columns if c[0] == s])
    table.columns = [f"{name} ({split})" for split, name in table.columns]
    if order is not None:
        table = table.reindex(order)
    return table.rename_axis("candidate").reset_index()


def metric_table(evals: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """Every metric of every candidate on every set: one row per (candidate, set), candidates in
    `order` when given, one column per metric in the order they first appear (a file set's
    `loss`, `accuracy`...; an lm_eval set's `acc`, `exact_match`... as lm-eval names them)."""
    ok = evals[evals["status"] == "ok"]
    metrics = list(dict.fromkeys(ok["metric"]))
    table = ok.pivot_table(
        index=["candidate", "eval_set", "split"], columns="metric", values="value", sort=False
    )
    table = table.reindex(columns=metrics).reset_index()
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        table = table.sort_values("candidate", key=lambda c: c.map(rank), kind="stable")
    return table.rename_axis(columns=None).reset_index(drop=True)


def leaderboard(
    evals: pd.DataFrame, ingredients: dict[str, list[str]], ranking: Ranking
) -> pd.DataFrame:
    """Every candidate ranked by selection score, with merge gains over their ingredients."""
    board = candidate_scores(evals, ranking.metric)
    by_name = board.set_index("candidate")["test"]
    gains = [
        _gains(by_name, ingredients.get(c, []), by_name.get(c), ranking) for c in board["candidate"]
    ]
    board["ingredients"] = [ingredients.get(c, []) for c in board["candidate"]]
    board["gain_vs_best"] = [g[0] for g in gains]
    board["gain_vs_mean"] = [g[1] for g in gains]
    key = board["selection"] * -ranking.sign()
    board = board.assign(_key=key).sort_values(
        ["_key", "candidate"], na_position="last", kind="stable"
    )
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.drop(columns="_key").reset_index(drop=True)


def _gains(test: pd.Series, ingredients: list[str], score, ranking: Ranking):
    """(gain over the best ingredient, gain over the mean ingredient) on the test score."""
    values = [test.get(i) for i in ingredients if i in test.index]
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values or score is None or np.isnan(score):
        return None, None
    best = max(values) if ranking.higher_is_better else min(values)
    sign = ranking.sign()
    return sign * (score - best), sign * (score - float(np.mean(values)))


def merge_summary(board: pd.DataFrame) -> pd.DataFrame:
    """The merges only: did each beat its best ingredient and its mean ingredient on test?"""
    merges = board[board["kind"].isin(["checkpoint_average", "soup", "task_merge"])].copy()
    merges["beats_best"] = merges["gain_vs_best"].map(_verdict)
    merges["beats_mean"] = merges["gain_vs_mean"].map(_verdict)
    return merges


def _verdict(gain) -> str:
    if gain is None or (isinstance(gain, float) and np.isnan(gain)):
        return "n/a"
    return "yes" if gain > 0 else "no"


def board_markdown(board: pd.DataFrame, ranking: Ranking, title: str) -> str:
    """The leaderboard as a Markdown table."""
    columns = [
        "rank",
        "candidate",
        "kind",
        "selection",
        "test",
        "gain_vs_best",
        "gain_vs_mean",
        "ingredients",
    ]
    arrow = "higher" if ranking.higher_is_better else "lower"
    return (
        f"## {title}\n\n{len(board)} candidates ranked by mean `{ranking.metric}` on the "
        f"selection sets ({arrow} is better); `test` is never used for ranking. Gains are on "
        "test, positive when the merge beats its ingredients.\n\n" + markdown_table(board, columns)
    )


def sets_markdown(scores: pd.DataFrame, metric: str) -> str:
    """`set_scores` as a Markdown section."""
    return (
        f"## Each evaluation set\n\n`{metric}` of every candidate on each set, in "
        "leaderboard order.\n\n" + markdown_table(scores, list(scores.columns))
    )


def metrics_markdown(table: pd.DataFrame) -> str:
    """`metric_table` as a Markdown section."""
    return (
        "## Every metric\n\nEach candidate on each set, every metric it reports, in "
        "leaderboard order.\n\n" + markdown_table(table, list(table.columns))
    )


def markdown_table(frame: pd.DataFrame, columns: list[str]) -> str:
    """`columns` of `frame` as a Markdown table, cells formatted by `format_cell`."""
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    lines += [
        "| " + " | ".join(format_cell(row[c]) for c in columns) + " |"
        for _, row in frame.iterrows()
    ]
    return "\n".join(lines) + "\n"


def format_cell(value) -> str:
    """A table cell: floats to 4 significant digits, lists joined, missing values blank."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
