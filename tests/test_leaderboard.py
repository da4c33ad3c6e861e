"""The leaderboard from an evals table (pure pandas): selection-only ranking in the metric's
direction, and each merge's gains over its ingredients on test, checked by hand on a loss-ranked
and an accuracy-ranked board."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sweeps.intervals import Z95
from sweeps.leaderboard import (
    Ranking,
    board_markdown,
    candidate_scores,
    format_cell,
    leaderboard,
    markdown_table,
    merge_summary,
    metric_table,
    metrics_markdown,
    presentable,
    recommendation,
    set_scores,
    sets_markdown,
    task_winners,
    winners_markdown,
)

LOSS = Ranking("loss", higher_is_better=False)
ACCURACY = Ranking("accuracy", higher_is_better=True)
KINDS = {
    "a": "trial",
    "b": "trial",
    "soup": "soup",
    "merge": "task_merge",
    "average": "checkpoint_average",
    "base": "base",
}
INGREDIENTS = {"soup": ["a", "b"], "merge": ["a", "b"], "average": ["a"]}
COLUMNS = [
    "rank",
    "candidate",
    "kind",
    "tied",
    "path",
    "selection",
    "selection_low",
    "selection_high",
    "test",
    "test_low",
    "test_high",
    "ingredients",
    "gain_vs_best",
    "gain_vs_mean",
]


def evals_table(metric: str, scores: dict[str, dict[str, float]], **extra_rows) -> pd.DataFrame:
    """One ok row per (candidate, set) of `metric`; sets named `s*` are selection sets and `t*`
    test sets. Every candidate also gets a `noise` metric row that nothing should read."""
    rows = []
    for candidate, by_set in scores.items():
        for eval_set, value in by_set.items():
            split = "selection" if eval_set.startswith("s") else "test"
            common = {
                "candidate": candidate,
                "kind": KINDS[candidate],
                "eval_set": eval_set,
                "split": split,
                "status": "ok",
            }
            rows.append({**common, "metric": metric, "value": value})
            rows.append({**common, "metric": "noise", "value": 1000.0})
    return pd.DataFrame(rows + list(extra_rows.values()))


# Losses: lower is better. Test means: a 2.5, b 2.0, soup 1.5, merge 2.4, base 4.0.
LOSSES = {
    "a": {"s1": 2.0, "s2": 2.4, "t1": 2.0, "t2": 3.0},
    "b": {"s1": 1.0, "s2": 1.4, "t1": 1.5, "t2": 2.5},
    "soup": {"s1": 1.5, "s2": 1.9, "t1": 1.0, "t2": 2.0},
    "merge": {"s1": 2.6, "s2": 2.6, "t1": 2.2, "t2": 2.6},
    "base": {"s1": 3.0, "s2": 3.0, "t1": 4.0, "t2": 4.0},
}
# Accuracies: higher is better. Test: a 0.6, b 0.8, soup 0.75, merge 0.9, base 0.1.
ACCURACIES = {
    "a": {"s1": 0.5, "t1": 0.6},
    "b": {"s1": 0.7, "t1": 0.8},
    "soup": {"s1": 0.9, "t1": 0.75},
    "merge": {"s1": 0.6, "t1": 0.9},
    "base": {"s1": 0.2, "t1": 0.1},
}


def test_scores_are_means_over_the_sets_of_each_split_for_the_ranked_metric_only():
    failed = {
        "candidate": "a",
        "kind": "trial",
        "eval_set": "t3",
        "split": "test",
        "status": "failed",
        "metric": "loss",
        "value": 99.0,
    }
    scores = candidate_scores(evals_table("loss", LOSSES, failed=failed), "loss")
    scores = scores.set_index("candidate")
    for candidate, by_set in LOSSES.items():
        assert scores.loc[candidate, "selection"] == pytest.approx(
            (by_set["s1"] + by_set["s2"]) / 2
        )
        assert scores.loc[candidate, "test"] == pytest.approx((by_set["t1"] + by_set["t2"]) / 2)
        assert scores.loc[candidate, "kind"] == KINDS[candidate]


def test_a_loss_board_ranks_lowest_selection_loss_first_and_gains_are_positive_when_lower():
    board = leaderboard(evals_table("loss", LOSSES), INGREDIENTS, LOSS)
    # Selection means: b 1.2, soup 1.7, a 2.2, merge 2.6, base 3.0.
    assert list(board.columns) == COLUMNS
    assert list(board["candidate"]) == ["b", "soup", "a", "merge", "base"]
    assert list(board["rank"]) == [1, 2, 3, 4, 5] and list(board.index) == [0, 1, 2, 3, 4]
    rows = board.set_index("candidate")
    # The soup's test loss is 1.5; its best ingredient (lowest loss) is b at 2.0, and the mean
    # ingredient is (2.5 + 2.0) / 2 = 2.25: it beats both, so both gains are positive.
    assert rows.loc["soup", "gain_vs_best"] == pytest.approx(2.0 - 1.5)
    assert rows.loc["soup", "gain_vs_mean"] == pytest.approx(2.25 - 1.5)
    # The merge's test loss is 2.4: worse than b (2.0) and than the mean (2.25).
    assert rows.loc["merge", "gain_vs_best"] == pytest.approx(2.0 - 2.4)
    assert rows.loc["merge", "gain_vs_mean"] == pytest.approx(2.25 - 2.4)
    assert rows.loc["soup", "ingredients"] == ["a", "b"]
    for candidate in ("a", "b", "base"):  # not merges: no ingredients, no gains
        assert rows.loc[candidate, "ingredients"] == []
        assert pd.isna(rows.loc[candidate, "gain_vs_best"])
        assert pd.isna(rows.loc[candidate, "gain_vs_mean"])


def test_an_accuracy_board_ranks_highest_first_and_gains_are_positive_when_higher():
    board = leaderboard(evals_table("accuracy", ACCURACIES), INGREDIENTS, ACCURACY)
    # Selection: soup 0.9, b 0.7, merge 0.6, a 0.5, base 0.2.
    assert list(board["candidate"]) == ["soup", "b", "merge", "a", "base"]
    rows = board.set_index("candidate")
    # The soup's test accuracy is 0.75; its best ingredient is b at 0.8 (the highest), the mean
    # (0.6 + 0.8) / 2 = 0.7: below the best, above the mean.
    assert rows.loc["soup", "gain_vs_best"] == pytest.approx(0.75 - 0.8)
    assert rows.loc["soup", "gain_vs_mean"] == pytest.approx(0.75 - 0.7)
    assert rows.loc["merge", "gain_vs_best"] == pytest.approx(0.9 - 0.8)
    assert rows.loc["merge", "gain_vs_mean"] == pytest.approx(0.9 - 0.7)
    summary = merge_summary(board).set_index("candidate")
    assert list(summary.index) == ["soup", "merge"]
    assert summary.loc["soup", ["beats_best", "beats_mean"]].tolist() == ["no", "yes"]
    assert summary.loc["merge", ["beats_best", "beats_mean"]].tolist() == ["yes", "yes"]


def test_a_merge_only_as_good_as_its_ingredients_does_not_beat_them():
    scores = {
        "a": {"s1": 0.5, "t1": 0.5},
        "b": {"s1": 1.0, "t1": 1.0},
        "soup": {"s1": 0.75, "t1": 0.75},  # the mean ingredient, exactly
        "average": {"s1": 0.5, "t1": 0.5},  # its one ingredient, exactly
    }
    board = leaderboard(evals_table("accuracy", scores), INGREDIENTS, ACCURACY)
    summary = merge_summary(board).set_index("candidate")
    assert sorted(summary.index) == ["average", "soup"]
    assert summary.loc["soup", "gain_vs_mean"] == 0.0
    assert summary.loc["soup", ["beats_best", "beats_mean"]].tolist() == ["no", "no"]
    assert summary.loc["average", ["gain_vs_best", "gain_vs_mean"]].tolist() == [0.0, 0.0]
    assert summary.loc["average", ["beats_best", "beats_mean"]].tolist() == ["no", "no"]


def test_without_test_sets_the_board_ranks_by_selection_and_has_no_gains():
    scores = {k: {"s1": v["s1"]} for k, v in ACCURACIES.items()}
    board = leaderboard(evals_table("accuracy", scores), INGREDIENTS, ACCURACY)
    assert list(board.columns) == COLUMNS
    assert list(board["candidate"]) == ["soup", "b", "merge", "a", "base"]
    assert board["test"].isna().all() and board["gain_vs_best"].isna().all()


def test_a_merge_is_compared_with_the_ingredients_that_were_evaluated():
    # b has no test row (say its test evaluation failed): only a counts.
    scores = {k: dict(v) for k, v in ACCURACIES.items()}
    del scores["b"]["t1"]
    board = leaderboard(evals_table("accuracy", scores), INGREDIENTS, ACCURACY)
    soup = board.set_index("candidate").loc["soup"]
    assert soup["gain_vs_best"] == pytest.approx(0.75 - 0.6)
    assert soup["gain_vs_mean"] == pytest.approx(0.75 - 0.6)
    # No ingredient evaluated on test, or no test score of its own: no gain, verdict n/a.
    for drop in (["a", "b"], ["soup"]):
        missing = {
            k: {s: x for s, x in v.items() if k not in drop or s != "t1"}
            for k, v in ACCURACIES.items()
        }
        board = leaderboard(evals_table("accuracy", missing), INGREDIENTS, ACCURACY)
        soup = merge_summary(board).set_index("candidate").loc["soup"]
        assert soup["gain_vs_best"] is None or math.isnan(soup["gain_vs_best"])
        assert soup["beats_best"] == soup["beats_mean"] == "n/a"


def test_ties_are_broken_by_name_and_unscored_candidates_come_last():
    scores = {
        "b": {"s1": 0.5, "t1": 0.5},
        "a": {"s1": 0.5, "t1": 0.5},
        "base": {"t1": 0.9},  # no selection score: last, whatever its test score
        "soup": {"s1": 0.4, "t1": 0.4},
    }
    for ranking in (ACCURACY, Ranking("accuracy", higher_is_better=False)):
        board = leaderboard(evals_table("accuracy", scores), INGREDIENTS, ranking)
        assert list(board["candidate"])[-1] == "base"
        assert list(board["candidate"]).index("a") < list(board["candidate"]).index("b")
    board = leaderboard(evals_table("accuracy", scores), INGREDIENTS, ACCURACY)
    assert list(board["candidate"]) == ["a", "b", "soup", "base"]


def test_set_scores_has_a_column_per_set_selection_first_in_the_given_order():
    evals = evals_table("loss", {k: LOSSES[k] for k in ("a", "b")})
    table = set_scores(evals, "loss", order=["b", "a"])
    assert list(table.columns) == [
        "candidate",
        "s1 (selection)",
        "s2 (selection)",
        "t1 (test)",
        "t2 (test)",
    ]
    assert list(table["candidate"]) == ["b", "a"]
    assert table.set_index("candidate").loc["a", "t2 (test)"] == LOSSES["a"]["t2"]


def test_markdown_names_the_direction_and_formats_cells():
    board = leaderboard(evals_table("loss", LOSSES), INGREDIENTS, LOSS)
    text = board_markdown(board, LOSS, "Candidates")
    assert text.startswith("## Candidates\n") and "(lower is better)" in text
    assert "5 candidates ranked by mean `loss`" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| rank"))
    # Columns: rank, candidate, kind, selection, tied, test, gains, ingredients (these rows have
    # no intervals, so nothing is tied and scores show without a half width).
    assert lines[header + 2].startswith("| 1 | b | trial | 1.2 |  | 2 |")
    assert "| soup | soup | 1.7 |  | 1.5 | 0.5 | 0.75 | a, b |" in text
    assert "Gains are on test, positive when the merge beats its ingredients." in text
    assert "(higher is better)" in board_markdown(board, ACCURACY, "x")
    sets = sets_markdown(set_scores(evals_table("loss", LOSSES), "loss", ["b", "a"]), "loss")
    assert sets.startswith(
        "## Each evaluation set\n\n`loss` of every candidate on each set, in leaderboard "
        "order.\n\n| candidate |"
    )
    assert "| candidate | s1 (selection) | s2 (selection) | t1 (test) | t2 (test) |" in sets
    assert sets.splitlines()[-2:] == ["| b | 1 | 1.4 | 1.5 | 2.5 |", "| a | 2 | 2.4 | 2 | 3 |"]
    assert format_cell(2 / 3) == "0.6667" and format_cell(1234567.0) == "1.235e+06"
    assert format_cell(float("nan")) == format_cell(None) == ""
    assert format_cell(np.array(["x", "y"])) == "x, y" and format_cell(7) == "7"
    frame = pd.DataFrame({"n": [1, 2], "v": [0.5, None]})
    assert markdown_table(frame, ["v", "n"]) == "| v | n |\n|---|---|\n| 0.5 | 1 |\n|  | 2 |\n"


def task_evals(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (candidate, eval_set, metric, value, low, high, status): a set named `<task>` is
    that task's selection set and `<task>-test` its test set, as the sweep names them."""
    frame = pd.DataFrame(
        rows, columns=["candidate", "eval_set", "metric", "value", "low", "high", "status"]
    )
    frame["split"] = ["test" if s.endswith("-test") else "selection" for s in frame["eval_set"]]
    frame["kind"] = [KINDS.get(c, "trial") for c in frame["candidate"]]
    frame["path"] = "/runs/" + frame["candidate"]
    return frame


# Two tasks. On `add`, b wins selection by accuracy (a wins by the lower score); on `rev`, soup
# and a tie on selection (a wins on name); a failed row and a `loss` row must be ignored.
WINNER_ROWS = [
    ("a", "add", "accuracy", 0.6, 0.5, 0.7, "ok"),
    ("b", "add", "accuracy", 0.8, 0.7, 0.9, "ok"),
    ("soup", "add", "accuracy", 0.99, 0.9, 1.0, "error"),
    ("base", "add", "loss", 9.0, 8.0, 10.0, "ok"),
    ("a", "add-test", "accuracy", 0.55, 0.45, 0.65, "ok"),
    ("b", "add-test", "accuracy", 0.75, 0.65, 0.85, "ok"),
    ("soup", "rev", "accuracy", 0.4, 0.3, 0.5, "ok"),
    ("a", "rev", "accuracy", 0.4, 0.3, 0.5, "ok"),
    ("soup", "rev-test", "accuracy", 0.35, 0.25, 0.45, "ok"),
]


def test_each_task_winner_is_the_best_on_its_own_selection_set_with_its_test_score():
    winners = task_winners(task_evals(WINNER_ROWS), ["add", "rev", "none"], ACCURACY)
    assert list(winners["task"]) == ["add", "rev"]  # a task with no scores has no winner
    add, rev = winners.to_dict("records")
    assert add == {
        "task": "add",
        "candidate": "b",
        "kind": "trial",
        "selection": 0.8,
        "selection_low": 0.7,
        "selection_high": 0.9,
        "test": 0.75,
        "test_low": 0.65,
        "test_high": 0.85,
        "path": "/runs/b",
    }
    # A tie on selection goes to the first name; a's test score on rev is missing.
    assert rev["candidate"] == "a" and math.isnan(rev["test"]) and math.isnan(rev["test_low"])
    lower = task_winners(task_evals(WINNER_ROWS), ["add"], Ranking("accuracy", False))
    assert list(lower["candidate"]) == ["a"] and lower["test"].iloc[0] == 0.55


def test_recommendation_names_the_leader_its_path_intervals_ties_and_task_winners():
    evals = task_evals(WINNER_ROWS)
    board = leaderboard(evals, {}, ACCURACY)
    winners = task_winners(evals, ["add", "rev"], ACCURACY)
    lines = recommendation(board, winners, ACCURACY)
    # b leads with 0.8 [0.7, 0.9]; a's mean over both selection sets (0.5) has an interval from
    # the two sets' half widths, 0.5 ± sqrt(0.1² + 0.1²) / 2 = [0.429, 0.571]: not tied.
    assert lines[0] == (
        "Use this model: b (/runs/b): accuracy 0.8 [0.7, 0.9] on the selection sets, "
        "0.75 [0.65, 0.85] on test."
    )
    assert not any("tied" in line for line in lines)
    assert lines[1:] == [
        "For task add: b (/runs/b): 0.8 [0.7, 0.9] on its selection set, 0.75 [0.65, 0.85] "
        "on its test set.",
        "For task rev: a (/runs/a): 0.4 [0.3, 0.5] on its selection set, - on its test set.",
    ]
    # One task: no per-task lines. A wider interval for b ties a and soup with it.
    assert recommendation(board, winners.iloc[:1], ACCURACY) == lines[:1]
    wide = [
        r if r[:2] != ("b", "add") else ("b", "add", "accuracy", 0.8, 0.3, 1.0, "ok")
        for r in WINNER_ROWS
    ]
    tied = recommendation(leaderboard(task_evals(wide), {}, ACCURACY), None, ACCURACY)
    assert tied[1].startswith("2 other candidate(s) are tied with it")
    assert tied[0].endswith(
        "accuracy 0.8 [0.3, 1] on the selection sets, 0.75 [0.65, 0.85] on test."
    )


def test_recommendation_without_any_selection_score_says_so():
    evals = task_evals([("a", "add-test", "accuracy", 0.5, 0.4, 0.6, "ok")])
    board = leaderboard(evals, {}, ACCURACY)
    assert recommendation(board, None, ACCURACY) == [
        "No candidate has a selection score: nothing to recommend."
    ]
    plain = task_evals([("a", "add", "accuracy", 0.5, None, None, "ok")])
    (line,) = recommendation(leaderboard(plain, {}, ACCURACY), None, ACCURACY)
    assert "accuracy 0.5 on the selection sets, - on test." in line  # no interval known


def test_winners_markdown_shows_each_task_with_intervals_and_path():
    winners = task_winners(task_evals(WINNER_ROWS), ["add", "rev"], ACCURACY)
    text = winners_markdown(winners, "accuracy")
    assert text.startswith(
        "## Each task's winner\n\nThe best candidate on each task's own selection set by "
        "`accuracy` (95% intervals), with its score on that task's test set.\n\n"
    )
    assert "| task | candidate | kind | selection | test | path |" in text
    assert "| add | b | trial | 0.8 ±0.1 | 0.75 ±0.1 | /runs/b |" in text
    assert "| rev | a | trial | 0.4 ±0.1 |  | /runs/a |" in text


def test_metric_table_has_every_metric_of_every_candidate_on_every_set_in_order():
    rows = [
        ("b", "add", "loss", 1.5, None, None, "ok"),
        ("b", "add", "accuracy", 0.8, None, None, "ok"),
        ("a", "add", "accuracy", 0.6, None, None, "ok"),
        ("a", "add", "loss", 2.0, None, None, "ok"),
        ("a", "add-test", "exact_match", 0.1, None, None, "ok"),
        ("a", "rev", "accuracy", 0.9, None, None, "error"),
    ]
    table = metric_table(task_evals(rows), order=["a", "b"])
    assert list(table.columns) == [
        "candidate",
        "eval_set",
        "split",
        "loss",
        "accuracy",
        "exact_match",
    ]
    assert list(zip(table["candidate"], table["eval_set"])) == [
        ("a", "add"),
        ("a", "add-test"),
        ("b", "add"),
    ]
    first = table.iloc[0]
    assert (first["loss"], first["accuracy"], first["split"]) == (2.0, 0.6, "selection")
    assert math.isnan(first["exact_match"]) and table.iloc[1]["exact_match"] == 0.1
    unordered = metric_table(task_evals(rows))
    assert list(unordered["candidate"]) == ["b", "a", "a"]  # as they first appear
    text = metrics_markdown(table)
    assert text.startswith(
        "## Every metric\n\nEach candidate on each set, every metric it reports, in "
        "leaderboard order.\n\n| candidate | eval_set | split | loss | accuracy | exact_match |"
    )
    assert "| a | add | selection | 2 | 0.6 |  |" in text


def test_details_join_each_candidate_and_a_flagged_one_ranks_after_the_rest():
    """`details` (one row per candidate; its own `kind` is dropped for the board's) joins by
    candidate name, and a flagged candidate (a NaN loss, a cut-off completion) ranks below
    every unflagged one whatever its score: here `soup`, the best by selection."""
    details = pd.DataFrame(
        {
            "kind": ["wrong"] * 5,
            "task": ["add", "add", "add", "add", None],
            "flag": [None, None, "completions cut off", None, None],
        },
        index=pd.Index(["a", "b", "soup", "merge", "base"], name="candidate"),
    )
    board = leaderboard(evals_table("accuracy", ACCURACIES), INGREDIENTS, ACCURACY, details)
    assert list(board["candidate"]) == ["b", "merge", "a", "base", "soup"]
    assert list(board["rank"]) == [1, 2, 3, 4, 5]
    by_name = board.set_index("candidate")
    assert (
        by_name.loc["soup", "flag"] == "completions cut off" and by_name.loc["a", "task"] == "add"
    )
    assert by_name.loc["merge", "kind"] == "task_merge"  # the evals' kind, not the details'
    assert by_name["tied"].dtype == bool
    unflagged = leaderboard(evals_table("accuracy", ACCURACIES), INGREDIENTS, ACCURACY)
    assert list(unflagged["candidate"])[0] == "soup"  # the same board without the flag


def test_several_sets_combine_their_standard_errors_and_an_interval_stands_for_a_missing_one():
    """Two selection sets: the mean of the two scores, and a 95% half width of
    z * sqrt(se1^2 + se2^2) / 2 (z = 1.96), where set 2 gives no standard error and its
    interval's half width over z stands for it; one test set keeps its own interval as it is."""
    rows = [
        ("a", "s1", 0.5, 0.30, 0.70, 0.10),
        ("a", "s2", 0.7, 0.60, 0.80, math.nan),
        ("a", "t1", 0.9, 0.85, 0.99, 0.02),
    ]
    evals = pd.DataFrame(
        [
            {"candidate": c, "kind": "trial", "eval_set": s, "metric": "accuracy", "value": v,
             "low": lo, "high": hi, "stderr": se, "status": "ok",
             "split": "selection" if s.startswith("s") else "test"}
            for c, s, v, lo, hi, se in rows
        ]
    )  # fmt: skip
    scores = candidate_scores(evals, "accuracy").set_index("candidate").loc["a"]
    half = Z95 * math.sqrt(0.10**2 + (0.20 / (2 * Z95)) ** 2) / 2
    assert scores["selection"] == pytest.approx(0.6)
    assert scores["selection_low"] == pytest.approx(0.6 - half)
    assert scores["selection_high"] == pytest.approx(0.6 + half)
    assert (scores["test"], scores["test_low"], scores["test_high"]) == (0.9, 0.85, 0.99)
    no_intervals = candidate_scores(evals.drop(columns=["low", "high", "stderr"]), "accuracy")
    assert no_intervals[["selection_low", "test_high"]].isna().all().all()


def test_the_board_people_read_marks_ties_and_shows_a_flag_only_when_there_is_one():
    details = pd.DataFrame(
        {"task": ["add"] * 5, "flag": [None, None, "nan loss", None, None]},
        index=pd.Index(["a", "b", "soup", "merge", "base"], name="candidate"),
    )
    board = leaderboard(evals_table("accuracy", ACCURACIES), INGREDIENTS, ACCURACY, details)
    shown = presentable(board, ["train.lr"])
    assert list(shown.columns) == [
        "rank", "candidate", "kind", "task", "selection", "tied", "test", "gain_vs_best",
        "gain_vs_mean", "ingredients", "flag",
    ]  # fmt: skip
    assert list(shown["tied"]) == ["tied" if t else "" for t in board["tied"]]
    assert shown.set_index("candidate").loc["soup", "flag"] == "nan loss"
    plain = presentable(leaderboard(evals_table("accuracy", ACCURACIES), INGREDIENTS, ACCURACY))
    assert "flag" not in plain.columns and "task" not in plain.columns


def test_a_winner_without_intervals_has_nan_bounds():
    evals = task_evals(WINNER_ROWS).drop(columns=["low", "high"])
    winners = task_winners(evals, ["add"], ACCURACY)
    bounds = winners[["selection_low", "selection_high", "test_low", "test_high"]]
    assert all(pd.api.types.is_float_dtype(t) for t in bounds.dtypes) and bounds.isna().all().all()
