"""The trial table: Tune's results as `trials.parquet`, and the trials ranked by the sweep's
metric (the first `leaderboard.md`)."""

from __future__ import annotations

import math

import pandas as pd

from engine.core.rundir import RunDir, write_atomic, write_table
from engine.train.axes import Sizes, TrialIdentity, identify
from sweeps import Sweep
from sweeps.leaderboard import format_cell as cell

FIXED = [
    "name",
    "trial_id",
    "status",
    "task",
    "seed",
    "data_size",
    "eval_loss",
    "steps",
    "checkpoint",
    "checkpoints",
    "flag",
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


def trials_table(grid, sweep: Sweep, sizes: Sizes) -> pd.DataFrame:
    """One row per trial: identity, swept values (by dotted path), metrics, checkpoints."""
    # A trial Tune never started (stopped by Ctrl-C first) has no config yet: it has no row.
    rows = [_row(result, sweep, sizes) for result in grid if result.config]
    metric = [sweep.metric] if sweep.metric not in FIXED + EXTRA else []
    table = pd.DataFrame(rows, columns=FIXED + list(sweep.search_space()) + metric + EXTRA)
    return table.sort_values("trial_id", ignore_index=True)


def _row(result, sweep: Sweep, sizes: Sizes) -> dict:
    kept = [c.path for c, _ in (result.best_checkpoints or [])]
    return _fields(
        result.metrics or {},
        identify(sweep, result.config, sizes),
        sweep.metric,
        error=result.error,
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        kept=kept,
        path=result.path,
    )


def trial_row(trial, sweep: Sweep, sizes: Sizes) -> dict:
    """The row of a trial Tune reports finished, while the experiment still runs."""
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result
    return _fields(
        trial.last_result or {},
        identify(sweep, trial.config, sizes),
        sweep.metric,
        error=None,
        checkpoint=latest.checkpoint.path if latest else None,
        kept=[r.checkpoint.path for r in manager.best_checkpoint_results],
        path=trial.path,
    )


def _fields(
    metrics: dict, trial: TrialIdentity, metric: str, *, error, checkpoint, kept, path
) -> dict:
    row = {
        "name": trial.name,
        "trial_id": metrics.get("trial_id") or path.rsplit("/", 1)[-1],
        "status": _status(error, metrics),
        "task": trial.task,
        "seed": trial.seed,
        "data_size": trial.data_size,
        "eval_loss": metrics.get("eval_loss"),
        "steps": metrics.get("step"),
        "checkpoint": checkpoint,
        "checkpoints": kept,
        "flag": _flag(metrics),
        "train_loss": metrics.get("train_loss"),
        "examples_seen": metrics.get("examples_seen"),
        "tokens_seen": metrics.get("tokens_seen"),
        "seconds": metrics.get("seconds"),
        "peak_rss_mb": metrics.get("peak_rss_mb"),
        "finished_at": metrics.get("timestamp"),
        "error": _first_line(error),
        "path": path,
    }
    row.update(trial.values)
    row.setdefault(metric, metrics.get(metric))  # an evaluation metric the trial computed
    return row


def _flag(metrics: dict) -> str | None:
    """Why a trial's result cannot be trusted even though it ran: a loss that is NaN or
    infinite (diverged, or no labelled token to learn from); None when it can."""
    bad = [k for k in ("train_loss", "eval_loss") if k in metrics and not _finite(metrics[k])]
    return f"{' and '.join(bad)} not finite" if bad else None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


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
    """Trials that finished, best first by the sweep's metric; flagged ones after them (a NaN
    loss never ranks first), failed ones last."""
    key = sweep.metric if sweep.metric in table.columns else "eval_loss"
    done = table["status"] == "done"
    flagged = table["flag"].notna() if "flag" in table else pd.Series(False, index=table.index)
    best = table[done & ~flagged].sort_values(key, ascending=sweep.direction() == "min")
    return pd.concat([best, table[done & flagged], table[~done]], ignore_index=True)


def leaderboard_columns(sweep: Sweep) -> list[str]:
    metric = [sweep.metric] if sweep.metric != "eval_loss" else []
    task = ["task"] if sweep.tasks else []
    return [
        "name",
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
        f"{len(board)} trials, ranked by {sweep.metric} ({sweep.direction()}).",
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
