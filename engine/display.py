"""Results as terminal tables."""

from __future__ import annotations

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from engine.results import cell, leaderboard_columns, ranked
from engine.scaling import print_scaling
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
    print_scaling(run_dir, console)
    for _, row in table[table["status"] == "error"].iterrows():
        console.print(f"[red]trial {row['trial_id']} failed:[/] {row['error']}")
    if (table["status"] == "incomplete").any():
        console.print(f"[yellow]Some trials did not finish; continue with "
                      f"`raysoup resume {run_dir}`.")
    console.print(f"Run directory: {run_dir}  (trials.parquet, leaderboard.md)")
