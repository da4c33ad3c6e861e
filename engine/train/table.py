"""The trial table: the trials' folders as `trials.parquet`, and the trials ranked by the
sweep's metric (the first `leaderboard.md`)."""

from __future__ import annotations

import math

import pandas as pd

from engine.core.rundir import RunDir, write_atomic, write_table
from engine.train import records
from engine.train.axes import Sizes, TrialIdentity, identities
from sweeps import Sweep
from sweeps.leaderboard import format_cell as cell
from sweeps.objectives import PREFERENCE_METRICS
from sweeps.trials import RESULT_STATUSES, searched_columns

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
    "gpu_peak_mb",
    "tokens_per_s",
    "trainable_share",
    *PREFERENCE_METRICS,
    "workers",
    "attempts",
    "host",
    "node_id",
    "stopped_at",
    "stopped_by",
    "cloned",
    "finished_at",
    "error",
    "path",
]


def trials_table(run: RunDir, sweep: Sweep, sizes: Sizes) -> pd.DataFrame:
    """One row per trial Tune has started: identity, swept values (by dotted path), metrics,
    checkpoints; read from the trials' folders (`engine/train/records.py`), not from Tune's
    state, so the table holds what is on disk whatever Tune managed to save."""
    rows = []
    for trial in identities(sweep, sizes, run.tune):
        folders = records.trial_folders(run.tune, trial.name)
        if folders:  # a trial Tune never started (stopped by Ctrl-C first) has no row
            rows.append(_row(records.read_trial(folders), trial, sweep.metric))
    metric = [sweep.metric] if sweep.metric not in FIXED + EXTRA else []
    searched = searched_columns(sweep)
    table = pd.DataFrame(rows, columns=FIXED + searched + metric + EXTRA)
    return table.sort_values("trial_id", ignore_index=True)


def _row(record: records.TrialRecord, trial: TrialIdentity, metric: str) -> dict:
    metrics = record.metrics
    row = {
        "name": trial.name,
        "trial_id": record.trial_id,
        "status": record.status,
        "task": trial.task,
        "seed": trial.seed,
        "data_size": trial.data_size,
        "eval_loss": metrics.get("eval_loss"),
        "steps": metrics.get("step"),
        "checkpoint": str(record.checkpoint) if record.checkpoint else None,
        "checkpoints": [str(p) for p in record.checkpoints],
        "flag": _flag(metrics),
        "train_loss": metrics.get("train_loss"),
        "examples_seen": metrics.get("examples_seen"),
        "tokens_seen": metrics.get("tokens_seen"),
        "seconds": metrics.get("seconds"),
        "peak_rss_mb": metrics.get("peak_rss_mb"),
        "gpu_peak_mb": metrics.get("gpu_peak_mb"),
        "tokens_per_s": metrics.get("tokens_per_s"),
        "trainable_share": metrics.get("trainable_share"),
        **{name: metrics.get(name) for name in PREFERENCE_METRICS},
        "workers": metrics.get("workers", 1),
        "attempts": record.attempts,
        "host": record.where.get("host"),
        "node_id": record.where.get("node_id"),
        "stopped_at": record.stop["step"] if record.stop else None,
        "stopped_by": record.stop["by"] if record.stop else None,
        "cloned": record.clones,
        "finished_at": record.finished_at,
        "error": record.error,
        "path": str(record.path),
    }
    row.update(trial.values)
    row.update(record.values)  # population-based training changes them as it goes
    if trial.point is not None:
        row["point"] = trial.point
    row.setdefault(metric, metrics.get(metric))  # an evaluation metric the trial computed
    return row


def _flag(metrics: dict) -> str | None:
    """Why a trial's result cannot be trusted even though it ran: a loss that is NaN or
    infinite (diverged, or no labelled token to learn from); None when it can."""
    bad = [k for k in ("train_loss", "eval_loss") if k in metrics and not _finite(metrics[k])]
    return f"{' and '.join(bad)} not finite" if bad else None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def ranked(table: pd.DataFrame, sweep: Sweep) -> pd.DataFrame:
    """Trials with a result (done, or stopped early by the scheduler), best first by the
    sweep's metric; flagged ones after them (a NaN loss never ranks first), failed ones last."""
    key = sweep.metric if sweep.metric in table.columns else "eval_loss"
    done = table["status"].isin(RESULT_STATUSES)
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
