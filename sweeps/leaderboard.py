"""One leaderboard of every candidate (trials, merges, the base), from `evals.parquet`.

A candidate's selection score is its metric averaged over the `selection` eval sets and its test
score the same over the `test` sets; candidates are ranked by selection score only, so the test
column is an honest estimate of the chosen model. Each score carries its 95% interval (one set:
the set's own interval; several: the mean's, from each set's standard error), and a candidate
whose selection interval overlaps the leader's is marked tied with it. A flagged candidate (a
trial with a NaN loss, for example) is never ranked above one that is not. Each merge is
compared with its ingredients (the trials it was made from): the gain over the best and over the
mean ingredient, positive when the merge is better, on the test sets. With several tasks, each
task also has its own winner: the best candidate on that task's selection set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweeps.intervals import Z95

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
    """One row per candidate: its kind, and for `selection` and `test` the mean `metric` over
    that split's sets with its interval (`<split>_low`, `<split>_high`)."""
    ok = evals[(evals["metric"] == metric) & (evals["status"] == "ok")]
    first = evals.drop_duplicates("candidate").set_index("candidate")
    frame = pd.DataFrame({"candidate": first.index, "kind": first["kind"].to_numpy()})
    frame["path"] = first["path"].to_numpy() if "path" in first else None
    for split in ("selection", "test"):
        rows = ok[ok["split"] == split]
        combined = pd.DataFrame(
            [_combine(group) for _, group in rows.groupby("candidate")],
            index=sorted(set(rows["candidate"])),
            columns=["value", "low", "high"],
        ).reindex(frame["candidate"])
        frame[split] = combined["value"].to_numpy(float)
        frame[f"{split}_low"] = combined["low"].to_numpy(float)
        frame[f"{split}_high"] = combined["high"].to_numpy(float)
    return frame


def _combine(rows: pd.DataFrame) -> tuple[float, float, float]:
    """(mean, low, high): the mean of one candidate's scores on some sets and its 95% interval;
    one set keeps its own interval, several combine their standard errors (an interval's half
    width over 1.96 where a standard error is not known)."""
    values = rows["value"].to_numpy(float)
    low = rows["low"].to_numpy(float) if "low" in rows else values * np.nan
    high = rows["high"].to_numpy(float) if "high" in rows else values * np.nan
    if len(rows) == 1:
        return values[0], low[0], high[0]
    stderr = rows["stderr"].to_numpy(float) if "stderr" in rows else values * np.nan
    stderr = np.where(np.isfinite(stderr), stderr, (high - low) / (2 * Z95))
    mean, half = values.mean(), Z95 * math.sqrt(float(np.sum(stderr**2))) / len(values)
    return mean, mean - half, mean + half


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
    evals: pd.DataFrame,
    ingredients: dict[str, list[str]],
    ranking: Ranking,
    details: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every candidate ranked by selection score, with its interval, whether it is tied with
    the leader, its `details` (one row per candidate: task, method, searched fields, data
    size, `flag`), and merge gains over their ingredients."""
    board = candidate_scores(evals, ranking.metric)
    if details is not None:
        board = board.join(details.drop(columns="kind", errors="ignore"), on="candidate")
    flagged = board["flag"].notna() if "flag" in board else pd.Series(False, index=board.index)
    by_name = board.set_index("candidate")["test"]
    gains = [
        _gains(by_name, ingredients.get(c, []), by_name.get(c), ranking) for c in board["candidate"]
    ]
    board["ingredients"] = [ingredients.get(c, []) for c in board["candidate"]]
    board["gain_vs_best"] = [g[0] for g in gains]
    board["gain_vs_mean"] = [g[1] for g in gains]
    key = board["selection"] * -ranking.sign()
    board = board.assign(_flagged=flagged, _key=key).sort_values(
        ["_flagged", "_key", "candidate"], na_position="last", kind="stable"
    )
    board.insert(0, "rank", range(1, len(board) + 1))
    board = board.drop(columns=["_key", "_flagged"]).reset_index(drop=True)
    board.insert(3, "tied", _tied(board, ranking))
    return board


def _tied(board: pd.DataFrame, ranking: Ranking) -> list[bool]:
    """Whether each candidate's selection interval overlaps the leader's (the leader: False)."""
    if board.empty or pd.isna(board["selection"].iloc[0]):
        return [False] * len(board)
    leader = board.iloc[0]
    if ranking.higher_is_better:
        overlap = board["selection_high"] >= leader["selection_low"]
    else:
        overlap = board["selection_low"] <= leader["selection_high"]
    return [False] + [bool(v) for v in overlap.iloc[1:]]


def task_winners(evals: pd.DataFrame, tasks: list[str], ranking: Ranking) -> pd.DataFrame:
    """Per task: the best candidate on the task's selection set (`<task>`), with its interval,
    its test score on `<task>-test` and the path of its model."""
    ok = evals[(evals["metric"] == ranking.metric) & (evals["status"] == "ok")]
    rows = []
    for task in tasks:
        chosen = ok[(ok["eval_set"] == task) & (ok["split"] == "selection")].dropna(subset="value")
        if chosen.empty:
            continue
        best = chosen.sort_values(
            ["value", "candidate"], ascending=[not ranking.higher_is_better, True]
        ).iloc[0]
        test = ok[(ok["eval_set"] == f"{task}-test") & (ok["candidate"] == best["candidate"])]
        first = test.iloc[0] if len(test) else None
        rows.append(
            {
                "task": task,
                "candidate": best["candidate"],
                "kind": best["kind"],
                "selection": best["value"],
                "selection_low": best.get("low", math.nan),
                "selection_high": best.get("high", math.nan),
                "test": first["value"] if first is not None else math.nan,
                "test_low": first.get("low", math.nan) if first is not None else math.nan,
                "test_high": first.get("high", math.nan) if first is not None else math.nan,
                "path": best.get("path"),
            }
        )
    return pd.DataFrame(rows)


def _gains(test: pd.Series, ingredients: list[str], score, ranking: Ranking):
    """(gain over the best ingredient, gain over the mean ingredient) on the test score."""
    values = [test.get(i) for i in ingredients if i in test.index]
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values or score is None or np.isnan(score):
        return None, None
    best = max(values) if ranking.higher_is_better else min(values)
    sign = ranking.sign()
    return sign * (score - best), sign * (score - float(np.mean(values)))


def recommendation(
    board: pd.DataFrame, winners: pd.DataFrame | None, ranking: Ranking
) -> list[str]:
    """What to use, in words: the leader (its path, scores and intervals, how many candidates
    are tied with it) and, with several tasks, each task's own winner."""
    if board.empty or pd.isna(board["selection"].iloc[0]):
        return ["No candidate has a selection score: nothing to recommend."]
    top = board.iloc[0]
    tied = int(board["tied"].sum())
    lines = [
        f"Use this model: {top['candidate']} ({top['path']}): {ranking.metric} "
        f"{_with_interval(top, 'selection')} on the selection sets, "
        f"{_with_interval(top, 'test')} on test."
    ]
    if tied:
        lines.append(
            f"{tied} other candidate(s) are tied with it: their 95% intervals on the selection "
            "sets overlap its own, so the data cannot tell them apart."
        )
    if winners is not None and len(winners) > 1:
        lines += [
            f"For task {w['task']}: {w['candidate']} ({w['path']}): "
            f"{_with_interval(w, 'selection')} on its selection set, "
            f"{_with_interval(w, 'test')} on its test set."
            for w in winners.to_dict("records")
        ]
    return lines


def _with_interval(row, split: str) -> str:
    value, low, high = row[split], row.get(f"{split}_low"), row.get(f"{split}_high")
    if value is None or pd.isna(value):
        return "-"
    if low is None or pd.isna(low):
        return format_cell(float(value))
    return f"{format_cell(float(value))} [{format_cell(float(low))}, {format_cell(float(high))}]"


def interval_cell(row, split: str) -> str:
    """A score and the half width of its interval, for tables: `0.62 ±0.09`."""
    value, low, high = row[split], row.get(f"{split}_low"), row.get(f"{split}_high")
    if value is None or pd.isna(value):
        return ""
    if low is None or pd.isna(low) or pd.isna(high):
        return format_cell(float(value))
    return f"{format_cell(float(value))} ±{(float(high) - float(low)) / 2:.2g}"


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


DETAILS = ["task", "method", "data_size"]  # with the searched fields between method and size


def presentable(board: pd.DataFrame, searched: list[str] | None = None) -> pd.DataFrame:
    """The board as people read it: scores with the half width of their 95% interval
    (`0.62 ±0.09`), `tied` for candidates tied with the leader, and the columns that say what
    each candidate is; in rank order."""
    shown = board.copy()
    for split in ("selection", "test"):
        shown[split] = [interval_cell(row, split) for row in board.to_dict("records")]
    shown["tied"] = ["tied" if t else "" for t in board["tied"]]
    details = [c for c in (*DETAILS[:2], *(searched or []), DETAILS[2]) if c in board]
    columns = ["rank", "candidate", "kind", *details, "selection", "tied", "test"]
    columns += ["gain_vs_best", "gain_vs_mean", "ingredients"]
    columns += ["flag"] if "flag" in board and board["flag"].notna().any() else []
    return shown[columns]


def board_markdown(
    board: pd.DataFrame, ranking: Ranking, title: str, searched: list[str] | None = None
) -> str:
    """The leaderboard as a Markdown table."""
    shown = presentable(board, searched)
    arrow = "higher" if ranking.higher_is_better else "lower"
    return (
        f"## {title}\n\n{len(board)} candidates ranked by mean `{ranking.metric}` on the "
        f"selection sets ({arrow} is better); `test` is never used for ranking. Scores show "
        "their 95% interval (±); `tied`: the interval overlaps the leader's. Gains are on "
        "test, positive when the merge beats its ingredients.\n\n"
        + markdown_table(shown, list(shown.columns))
    )


def winners_markdown(winners: pd.DataFrame, metric: str) -> str:
    """Each task's winner as a Markdown section."""
    shown = winners.copy()
    for split in ("selection", "test"):
        shown[split] = [interval_cell(row, split) for row in winners.to_dict("records")]
    columns = ["task", "candidate", "kind", "selection", "test", "path"]
    return (
        f"## Each task's winner\n\nThe best candidate on each task's own selection set by "
        f"`{metric}` (95% intervals), with its score on that task's test set.\n\n"
        + markdown_table(shown, columns)
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
