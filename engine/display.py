"""Results as terminal tables."""

from __future__ import annotations

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from engine.results import cell, leaderboard_columns, ranked
from sweeps import Sweep


def leaderboard_table(table: pd.DataFrame, sweep: Sweep, limit: int | None = None) -> Table:
    """The leaderboard as a rich table, best first; failed trials show their error."""
    board = ranked(table, sweep)
    columns = [c for c in leaderboard_columns(sweep) if c in board.columns]
    out = Table(title=f"{sweep.name}: {len(board)} trials by {sweep.metric} ({sweep.mode})",
                box=box.SIMPLE_HEAD, pad_edge=False)
    out.add_column("#", justify="right", min_width=2)
    for column in columns:
        # The last part of a dotted path is enough in a header (`train.lr` -> `lr`).
        left = column in ("trial_id", "status")
        header = column.rsplit(".", 1)[-1]
        out.add_column(header, justify="left" if left else "right", no_wrap=True,
                       min_width=len(header))
    for rank, (_, row) in enumerate(board.head(limit).iterrows(), start=1):
        style = "red" if row["status"] != "done" else ("bold green" if rank == 1 else None)
        out.add_row(str(rank), *(cell(row[c]) for c in columns), style=style)
    return out


def print_result(table: pd.DataFrame, sweep: Sweep, run_dir, console: Console | None = None):
    console = console or Console()
    console.print(leaderboard_table(table, sweep))
    for _, row in table[table["status"] == "error"].iterrows():
        console.print(f"[red]trial {row['trial_id']} failed:[/] {row['error']}")
    if (table["status"] == "incomplete").any():
        console.print(f"[yellow]Some trials did not finish; continue with "
                      f"`raysoup resume {run_dir}`.")
    console.print(f"Run directory: {run_dir}  (trials.parquet, leaderboard.md)")


def evals_table(evals: pd.DataFrame) -> Table:
    """Evaluation results as a rich table: one row per (candidate, set), one column per metric."""
    metrics = list(dict.fromkeys(evals["metric"]))
    out = Table(title=f"{evals['candidate'].nunique()} candidate(s) on "
                f"{evals['eval_set'].nunique()} set(s)", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("candidate", "kind", "eval_set", "split", "n"):
        out.add_column(column, justify="right" if column == "n" else "left", no_wrap=True)
    for metric in metrics:
        out.add_column(metric, justify="right", no_wrap=True, min_width=len(metric))
    for (candidate, eval_set), group in evals.groupby(["candidate", "eval_set"], sort=False):
        first = group.iloc[0]
        values = dict(zip(group["metric"], group["value"]))
        failed = (group["status"] != "ok").any()
        out.add_row(candidate, first["kind"], eval_set, first["split"], str(first["n"]),
                    *(cell(values.get(m)) if m in values else "" for m in metrics),
                    style="red" if failed else None)
    return out


def print_evals(evals: pd.DataFrame, console: Console | None = None) -> None:
    console = console or Console()
    console.print(evals_table(evals))
    failed = evals[evals["status"] != "ok"].drop_duplicates(["candidate", "eval_set", "error"])
    for _, row in failed.iterrows():
        console.print(f"[red]{row['candidate']} on {row['eval_set']} failed:[/] {row['error']}",
                      highlight=False)
