"""Results as terminal tables."""

from __future__ import annotations

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from engine.report.board import ranking_for
from engine.report.scaling import print_scaling
from engine.train.table import leaderboard_columns, ranked
from sweeps import Sweep
from sweeps.config import DEFAULT_TASK
from sweeps.leaderboard import format_cell as cell


def leaderboard_table(table: pd.DataFrame, sweep: Sweep, limit: int | None = None) -> Table:
    """The leaderboard as a rich table, best first; failed trials show their error."""
    board = ranked(table, sweep)
    columns = [c for c in leaderboard_columns(sweep) if c in board.columns]
    out = Table(
        title=f"{sweep.name}: {len(board)} trials by {sweep.metric} ({sweep.mode})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    out.add_column("#", justify="right", min_width=2)
    for column in columns:
        # The last part of a dotted path is enough in a header (`train.lr` -> `lr`).
        left = column in ("trial_id", "status")
        header = column.rsplit(".", 1)[-1]
        out.add_column(
            header, justify="left" if left else "right", no_wrap=True, min_width=len(header)
        )
    for rank, (_, row) in enumerate(board.head(limit).iterrows(), start=1):
        style = "red" if row["status"] != "done" else ("bold green" if rank == 1 else None)
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
        console.print(candidates_table(board, ranking_for(sweep)))
    for _, row in table[table["status"] == "error"].iterrows():
        console.print(f"[red]trial {row['trial_id']} failed:[/] {row['error']}")
    if result.merges is not None:
        for row in result.merges[result.merges["status"] != "done"].itertuples():
            console.print(
                f"[red]merge {row.candidate} {row.status}:[/] {row.error}", highlight=False
            )
    if (table["status"] == "incomplete").any():
        console.print(
            f"[yellow]Some trials did not finish; continue with `raysoup resume {run_dir}`."
        )
    console.print(f"Run directory: {run_dir}  (report.html, leaderboard.md, trials.parquet)")


def candidates_table(board: pd.DataFrame, ranking) -> Table:
    """Every candidate by selection score; merges show their test gain over their ingredients."""
    arrow = "higher" if ranking.higher_is_better else "lower"
    out = Table(
        title=f"{len(board)} candidates by {ranking.metric} on the selection sets "
        f"({arrow} is better; test never chooses; gains on test)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    out.add_column("#", justify="right")
    out.add_column("candidate", overflow="fold", min_width=20)
    out.add_column("kind", no_wrap=True)
    for header in ("selection", "test", "vs best", "vs mean"):
        out.add_column(header, justify="right", no_wrap=True)
    for row in board.itertuples():
        gain = row.gain_vs_best
        style = None if gain is None or gain != gain else ("green" if gain > 0 else "red")
        out.add_row(
            str(row.rank),
            row.candidate,
            KIND_LABELS.get(row.kind, row.kind),
            *(cell(v) for v in (row.selection, row.test, gain, row.gain_vs_mean)),
            style=style,
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
    for column in ("candidate", "kind", "eval_set", "split", "n"):
        out.add_column(column, justify="right" if column == "n" else "left", no_wrap=True)
    for metric in metrics:
        out.add_column(metric, justify="right", no_wrap=True, min_width=len(metric))
    for (candidate, eval_set), group in evals.groupby(["candidate", "eval_set"], sort=False):
        first = group.iloc[0]
        values = dict(zip(group["metric"], group["value"]))
        failed = (group["status"] != "ok").any()
        out.add_row(
            candidate,
            first["kind"],
            eval_set,
            first["split"],
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
