"""The trial table: Tune's results as `trials.parquet`, and the trials ranked by the sweep's
metric (the first `leaderboard.md`)."""

from __future__ import annotations

import pandas as pd

from engine.core.rundir import RunDir, write_atomic, write_table
from sweeps import Sweep
from sweeps.leaderboard import format_cell as cell

FIXED = [
    "trial_id",
    "status",
    "task",
    "seed",
    "data_size",
    "eval_loss",
    "steps",
    "checkpoint",
    "checkpoints",
]
EXTRA = [
    "train_loss",
    "examples_seen",
    "tokens_seen",
    "seconds",
    "peak_rss_mb",
    "finished_at",
    "error",
    "path",
]


def trials_table(grid, sweep: Sweep) -> pd.DataFrame:
    """One row per trial: identity, swept values (by dotted path), metrics, checkpoints."""
    swept = list(sweep.search_space())
    rows = [_row(result, swept) for result in grid]
    table = pd.DataFrame(rows, columns=FIXED + swept + EXTRA)
    return table.sort_values("trial_id", ignore_index=True)


def _row(result, swept: list[str]) -> dict:
    kept = [c.path for c, _ in (result.best_checkpoints or [])]
    return _fields(
        result.metrics or {},
        result.config or {},
        swept,
        error=result.error,
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        kept=kept,
        path=result.path,
    )


def trial_row(trial, sweep: Sweep) -> dict:
    """The row of a trial Tune reports finished, while the experiment still runs."""
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result
    return _fields(
        trial.last_result or {},
        trial.config,
        list(sweep.search_space()),
        error=None,
        checkpoint=latest.checkpoint.path if latest else None,
        kept=[r.checkpoint.path for r in manager.best_checkpoint_results],
        path=trial.path,
    )


def _fields(
    metrics: dict, config: dict, swept: list[str], *, error, checkpoint, kept, path
) -> dict:
    row = {
        "trial_id": metrics.get("trial_id") or path.rsplit("/", 1)[-1],
        "status": _status(error, metrics),
        "task": config.get("task"),
        "seed": config.get("seed"),
        "data_size": metrics.get("data_size", config.get("data_size")),
        "eval_loss": metrics.get("eval_loss"),
        "steps": metrics.get("step"),
        "checkpoint": checkpoint,
        "checkpoints": kept,
        "train_loss": metrics.get("train_loss"),
        "examples_seen": metrics.get("examples_seen"),
        "tokens_seen": metrics.get("tokens_seen"),
        "seconds": metrics.get("seconds"),
        "peak_rss_mb": metrics.get("peak_rss_mb"),
        "finished_at": metrics.get("timestamp"),
        "error": _first_line(error),
        "path": path,
    }
    row.update({name: config.get(name) for name in swept})
    return row


def _status(error, metrics: dict) -> str:
    """`done`, `error`, or `incomplete` (stopped early, for example by Ctrl-C: resume it)."""
    if error:
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
    task = ["task"] if sweep.tasks else []
    return [
        "trial_id",
        *task,
        *sweep.search_space(),
        "data_size",
        "seed",
        "eval_loss",
        *metric,
        "steps",
        "status",
    ]


def leaderboard_markdown(table: pd.DataFrame, sweep: Sweep) -> str:
    board = ranked(table, sweep)
    columns = [c for c in leaderboard_columns(sweep) if c in board.columns]
    lines = [
        f"# {sweep.name}: leaderboard",
        "",
        f"{len(board)} trials, ranked by {sweep.metric} ({sweep.mode}).",
        "",
        "| rank | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for rank, (_, row) in enumerate(board.iterrows(), start=1):
        lines.append(f"| {rank} | " + " | ".join(cell(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_results(table: pd.DataFrame, sweep: Sweep, run: RunDir) -> None:
    """`trials.parquet`, and a first `leaderboard.md` of the trials (the report stage adds the
    other candidates)."""
    write_table(table, run.trials)
    write_atomic(run.leaderboard, leaderboard_markdown(table, sweep))
