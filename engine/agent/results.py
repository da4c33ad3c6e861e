"""The results of a W&B script sweep: `<run dir>/trials.parquet` from the trials' folders (read
without Ray), ranked by the metric, and the table the terminal shows."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.agent import records
from engine.agent.plan import ScriptSweep
from engine.core.rundir import RunDir, write_table

FAILED = ("error", "unfinished")  # `unfinished`: its driver or node went away; a rerun resumes it
COLUMNS = ["metric", "last", "best", "logged", "nonfinite", "wandb_run_id", "exit_code", "error"]


@dataclass(frozen=True)
class AgentResult:
    """A W&B script sweep's run directory, its trials table, and the target if one was met."""

    run_dir: Path
    table: pd.DataFrame
    metric: str | None
    goal: str
    target: dict | None = None

    def failures(self) -> list[str]:
        """The trials that failed (or were left unfinished): `raysoup run` then exits 1."""
        return self.table.loc[self.table["status"].isin(FAILED), "trial_id"].tolist()


def trials_table(run: RunDir, sweep: ScriptSweep) -> pd.DataFrame:
    """One row per trial that started: its id, status (done, stopped, error, unfinished), each
    parameter (`config/<name>`, nested ones `config/<name>/<name>`), the metric's last and best
    value, how many values it logged (`nonfinite` of them NaN or infinite), the W&B run id of
    the script's run, its exit code and error; ranked by the metric."""
    metric = sweep.parsed.metric
    rows = []
    for folder in records.folders(run.root):
        record = records.read(folder)
        row: dict[str, Any] = {"trial_id": folder.name, "status": record["status"]}
        params = record.get("params") or {}
        row.update({config_column(path): _at(params, path) for path in sweep.paths})
        row.update({column: record.get(column) for column in COLUMNS})
        row["metric"] = metric.name if metric else None
        rows.append(row)
    columns = ["trial_id", "status", *map(config_column, sweep.paths), *COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    table = table.apply(_storable)
    return rank(table, metric.goal if metric else "minimize")


def config_column(path: tuple[str, ...]) -> str:
    return "config/" + "/".join(path)


def _at(params: dict, path: tuple[str, ...]) -> Any:
    node: Any = params
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _storable(column: pd.Series) -> pd.Series:
    # Parquet holds one type per column: values of several types, lists or mappings as JSON.
    kinds = {type(v) for v in column if v is not None and not _missing(v)}
    if len(kinds) <= 1 and not kinds & {list, dict} or kinds <= {int, float}:
        return column
    return column.map(lambda v: None if v is None else json.dumps(v))


def _missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def rank(table: pd.DataFrame, goal: str) -> pd.DataFrame:
    """Best first by the best value logged (lower when minimizing); trials with no finite
    value, then failed ones, last."""
    failed = table["status"].isin(FAILED)
    best = pd.to_numeric(table["best"], errors="coerce")
    key = best if goal == "minimize" else -best
    order = pd.DataFrame({"failed": failed, "key": key}).sort_values(
        ["failed", "key"], na_position="last", kind="stable"
    )
    return table.loc[order.index].reset_index(drop=True)


def write(run: RunDir, sweep: ScriptSweep, target: dict | None) -> AgentResult:
    """Writes `trials.parquet` and returns the result."""
    table = trials_table(run, sweep)
    write_table(table, run.trials)
    metric = sweep.parsed.metric
    name, goal = (metric.name, metric.goal) if metric else (None, "minimize")
    return AgentResult(run.root, table, name, goal, target)


def print_result(result: AgentResult, console: Console) -> None:
    """The trials, best first, then each failed trial's error."""
    table = result.table
    params = [c for c in table.columns if c.startswith("config/")]
    shown = Table(title=f"trials ({result.run_dir / 'trials.parquet'})")
    for name in ["#", "trial", "status", *(c.removeprefix("config/") for c in params)]:
        shown.add_column(name)
    for name in [f"{result.metric} best", "last", "logged"] if result.metric else []:
        shown.add_column(name, justify="right")
    for i, row in table.iterrows():
        cells = [str(i + 1), row["trial_id"], _status(row), *(_cell(row[c]) for c in params)]
        if result.metric:
            cells += [_cell(row["best"]), _cell(row["last"]), _cell(row["logged"])]
        shown.add_row(*(Text(c) for c in cells))
    console.print(shown)
    for _, row in table[table["status"].isin(FAILED)].iterrows():
        reason = (row["error"] or "no outcome recorded: run the sweep again to finish it").strip()
        console.print(Text(f"{row['trial_id']}: {reason}", style="red"))
    if result.target:
        t = result.target
        console.print(f"metric target {t['target']} reached by {t['trial_id']} ({t['value']:.6g})")


def _status(row: pd.Series) -> str:
    flagged = row.get("nonfinite")
    return f"{row['status']} ({int(flagged)} non-finite)" if _count(flagged) else row["status"]


def _count(value: Any) -> bool:
    return value is not None and not _missing(value) and int(value) > 0


def _cell(value: Any) -> str:
    if value is None or _missing(value):
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)
