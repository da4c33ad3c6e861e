"""Turning a finished Tune experiment into `trials.parquet` and the leaderboard."""

from __future__ import annotations

import io

import pandas as pd

from engine.rundir import RunDir, write_atomic
from sweeps import Sweep

FIXED = ["trial_id", "status", "seed", "data_size", "eval_loss", "steps", "checkpoint",
         "checkpoints"]
EXTRA = ["train_loss", "examples_seen", "tokens_seen", "seconds", "peak_rss_mb", "error", "path"]


def trials_table(grid, sweep: Sweep) -> pd.DataFrame:
    """One row per trial: identity, swept values (by dotted path), metrics, checkpoints."""
    swept = list(sweep.search_space())
    rows = [_row(result, swept) for result in grid]
    table = pd.DataFrame(rows, columns=FIXED + swept + EXTRA)
    return table.sort_values("trial_id", ignore_index=True)


def _row(result, swept: list[str]) -> dict:
    metrics, config = result.metrics or {}, result.config or {}
    kept = [c.path for c, _ in (result.best_checkpoints or [])]
    row = {
        "trial_id": metrics.get("trial_id") or result.path.rsplit("/", 1)[-1],
        "status": _status(result, metrics),
        "seed": config.get("seed"),
        "data_size": metrics.get("data_size", config.get("data_size")),
        "eval_loss": metrics.get("eval_loss"),
        "steps": metrics.get("step"),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "checkpoints": kept,
        "train_loss": metrics.get("train_loss"),
        "examples_seen": metrics.get("examples_seen"),
        "tokens_seen": metrics.get("tokens_seen"),
        "seconds": metrics.get("seconds"),
        "peak_rss_mb": metrics.get("peak_rss_mb"),
        "error": _first_line(result.error),
        "path": result.path,
    }
    row.update({path: config.get(path) for path in swept})
    return row


def _status(result, metrics: dict) -> str:
    """`done`, `error`, or `incomplete` (stopped early, for example by Ctrl-C: resume it)."""
    if result.error:
        return "error"
    finished = metrics.get("step") is not None and metrics.get("step") == metrics.get("total_steps")
    return "done" if finished else "incomplete"


def _first_line(error) -> str | None:
    if error is None:
        return None
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def ranked(table: pd.DataFrame, sweep: Sweep) -> pd.DataFrame:
    """Trials that finished, best first by the sweep's metric; failed ones last."""
    key = sweep.metric if sweep.metric in table.columns else "eval_loss"
    done = table[table["status"] == "done"].sort_values(key, ascending=sweep.mode == "min")
    return pd.concat([done, table[table["status"] != "done"]], ignore_index=True)


def leaderboard_columns(sweep: Sweep) -> list[str]:
    metric = [sweep.metric] if sweep.metric != "eval_loss" else []
    return (["trial_id", *sweep.search_space(), "data_size", "seed", "eval_loss", *metric,
             "steps", "status"])


def leaderboard_markdown(table: pd.DataFrame, sweep: Sweep) -> str:
    board = ranked(table, sweep)
    columns = [c for c in leaderboard_columns(sweep) if c in board.columns]
    lines = [f"# {sweep.name}: leaderboard", "",
             f"{len(board)} trials, ranked by {sweep.metric} ({sweep.mode}).", "",
             "| rank | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for rank, (_, row) in enumerate(board.iterrows(), start=1):
        lines.append(f"| {rank} | " + " | ".join(cell(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_results(table: pd.DataFrame, sweep: Sweep, run: RunDir) -> None:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    write_atomic(run.trials, buffer.getvalue())
    write_atomic(run.leaderboard, leaderboard_markdown(table, sweep))
