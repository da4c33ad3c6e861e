"""Results as terminal tables."""

from __future__ import annotations

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from engine.core.storage import shown
from engine.report.board import ranking_for, winners
from engine.report.scaling import print_scaling
from engine.train.table import leaderboard_columns, ranked
from sweeps import Sweep
from sweeps.config import DEFAULT_TASK
from sweeps.leaderboard import format_cell as cell
from sweeps.leaderboard import interval_cell, recommendation
from sweeps.trials import RESULT_STATUSES


def leaderboard_table(table: pd.DataFrame, sweep: Sweep, limit: int | None = None) -> Table:
    """The trials as a rich table, best first. The name says what each trial is (task,
    searched values, data size, seed), so only the scores follow it: `leaderboard.md` has a
    column for each."""
    board = ranked(table, sweep)
    shown = {"name", "eval_loss", sweep.metric, "steps", "status"}
    columns = [c for c in leaderboard_columns(sweep) if c in board.columns and c in shown]
    out = Table(
        title=f"{sweep.name}: {len(board)} trials by {sweep.metric} ({sweep.direction()})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    out.add_column("#", justify="right", min_width=2)
    for column in columns:
        # The last part of a dotted path is enough in a header (`train.lr` -> `lr`).
        left = column in ("name", "status")
        header = column.rsplit(".", 1)[-1]
        out.add_column(
            header,
            justify="left" if left else "right",
            no_wrap=column != "name",
            overflow="fold",
            min_width=len(header),
        )
    for rank, (_, row) in enumerate(board.head(limit).iterrows(), start=1):
        finished = row["status"] in RESULT_STATUSES
        style = "red" if not finished else ("bold green" if rank == 1 else None)
        out.add_row(str(rank), *(cell(row[c]) for c in columns), style=style)
    return out


def print_result(result, console: Console | None = None) -> None:
    """A sweep's result in the terminal: trials, the scaling fit, every candidate, failures."""
    console = console or Console()
    table, sweep, run_dir = result.trials, result.sweep, result.run_dir
    console.print(leaderboard_table(table, sweep))
    print_scaling(run_dir, console)
    board = result.candidates()
    if board is not None:
        board = board.assign(path=board["path"].map(shown))  # where a user finds it
        ranking = ranking_for(sweep)
        console.print(candidates_table(board, ranking))
        best = winners(sweep, result.evals)
        if len(best) > 1:
            console.print(winners_table(best, ranking))
        for line in recommendation(board, best, ranking):
            console.print(
                line, style="bold green" if line.startswith("Use") else None, highlight=False
            )
    if result.merges is not None:
        for row in result.merges[result.merges["status"] == "skipped"].itertuples():
            console.print(f"[yellow]merge {row.candidate} skipped:[/] {row.error}", highlight=False)
    for row in table[table["flag"].notna()].to_dict("records") if "flag" in table else []:
        console.print(
            f"[yellow]trial {row['name']}: {row['flag']}; its result cannot be trusted and it is "
            "ranked below every trial without a flag.",
            highlight=False,
        )
    failures = result.failures()
    if failures:
        console.print(f"[red bold]{len(failures)} failure(s):")
        for line in failures:
            console.print(f"[red]  {line}", highlight=False)
    stopped = table[table["status"] == "stopped"]
    if len(stopped):
        console.print(
            f"{len(stopped)} of {len(table)} trials stopped early by the scheduler "
            f"({', '.join(sorted(set(stopped['stopped_by'].dropna())))}); each keeps its newest "
            "checkpoint as its result.",
            highlight=False,
        )
    run_dir = shown(run_dir)
    if (table["status"] == "incomplete").any():
        console.print(
            f"[yellow]Some trials did not finish; continue with `raysoup resume {run_dir}`."
        )
    console.print(f"Run directory: {run_dir}  (report.html, leaderboard.md, trials.parquet)")


def candidates_table(board: pd.DataFrame, ranking) -> Table:
    """Every candidate by selection score with its 95% interval (`≈`: tied with the leader);
    merges show their test gain over their best ingredient."""
    arrow = "higher" if ranking.higher_is_better else "lower"
    out = Table(
        title=f"{len(board)} candidates by {ranking.metric} on the selection sets "
        f"({arrow} is better; ± 95% interval; ≈ tied with #1; test never chooses)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    out.add_column("#", justify="right")
    out.add_column("candidate", overflow="fold", min_width=16)
    out.add_column("kind", no_wrap=True)
    for header in ("selection", "", "test", "vs best"):
        out.add_column(header, justify="right", no_wrap=True)
    for row in board.to_dict("records"):
        gain = row["gain_vs_best"]
        style = None if gain is None or gain != gain else ("green" if gain > 0 else "red")
        out.add_row(
            str(row["rank"]),
            row["candidate"] + (f" [{row['flag']}]" if row.get("flag") else ""),
            KIND_LABELS.get(row["kind"], row["kind"]),
            interval_cell(row, "selection"),
            "≈" if row["tied"] else "",
            interval_cell(row, "test"),
            cell(gain),
            style="red" if row.get("flag") else style,
        )
    return out


def winners_table(winners: pd.DataFrame, ranking) -> Table:
    """Each task's best candidate on its own selection set, with its test score."""
    out = Table(
        title=f"each task's winner by {ranking.metric}", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for header in ("task", "candidate", "selection", "test"):
        out.add_column(header, justify="right" if header in ("selection", "test") else "left")
    for row in winners.to_dict("records"):
        out.add_row(
            row["task"],
            row["candidate"],
            interval_cell(row, "selection"),
            interval_cell(row, "test"),
        )
    return out


KIND_LABELS = {"checkpoint_average": "ckpt avg", "task_merge": "task merge"}


def selection_table(stages: list[dict], task: str) -> Table:
    """The data selection stages of a task: rows in and out of each, and why rows were removed."""
    title = "data selection" + ("" if task == DEFAULT_TASK else f" of task {task}")
    out = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("#", "stage", "rows in", "rows out", "removed", "seconds"):
        out.add_column(header, justify="left" if header in ("stage", "removed") else "right")
    for index, stage in enumerate(stages):
        why = ", ".join(f"{reason} {count}" for reason, count in stage["removed"].items())
        out.add_row(
            str(index),
            stage["type"],
            str(stage["rows_in"]),
            str(stage["rows_out"]),
            why or "-",
            f"{stage['seconds']:.1f}",
        )
    return out


def evals_table(evals: pd.DataFrame) -> Table:
    """Evaluation results as a rich table: one row per (candidate, set), one column per metric."""
    metrics = list(dict.fromkeys(evals["metric"]))
    out = Table(
        title=f"{evals['candidate'].nunique()} candidate(s) on "
        f"{evals['eval_set'].nunique()} set(s)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    # Kind and split only when they tell rows apart: the table should fit 80 columns.
    shown = [c for c in ("kind", "split") if evals[c].nunique() > 1]
    out.add_column("candidate", overflow="fold", min_width=12)
    for column in ("set", *shown, "n"):
        out.add_column(column, justify="right" if column == "n" else "left", no_wrap=True)
    for metric in metrics:
        out.add_column(metric.replace("_", " "), justify="right", overflow="fold")
    for (candidate, eval_set), group in evals.groupby(["candidate", "eval_set"], sort=False):
        first = group.iloc[0]
        values = dict(zip(group["metric"], group["value"]))
        failed = (group["status"] != "ok").any()
        out.add_row(
            candidate,
            eval_set,
            *(str(first[c]) for c in shown),
            str(first["n"]),
            *(cell(values.get(m)) if m in values else "" for m in metrics),
            style="red" if failed else None,
        )
    return out


def print_evals(evals: pd.DataFrame, console: Console | None = None) -> None:
    console = console or Console()
    console.print(evals_table(evals))
    failed = evals[evals["status"] != "ok"].drop_duplicates(["candidate", "eval_set", "error"])
    for _, row in failed.iterrows():
        console.print(
            f"[red]{row['candidate']} on {row['eval_set']} failed:[/] {row['error']}",
            highlight=False,
        )
