"""The report's files: `leaderboard.md`, `report.html` and `plots/`.

Everything here reads the run directory's tables, so `raysoup report` rebuilds the same report
from a finished (or interrupted) run without Ray.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from engine.core.rundir import RunDir, write_atomic
from engine.report.board import candidate_board, ranking_for
from engine.train.table import leaderboard_markdown
from sweeps import Sweep
from sweeps.leaderboard import (
    Ranking,
    board_markdown,
    merge_summary,
    metric_table,
    metrics_markdown,
    set_scores,
    sets_markdown,
)
from sweeps.plots import plot_by_kind, plot_gains, save_plots
from sweeps.report import render_html, table_html


def write_report(
    sweep: Sweep,
    run: RunDir,
    trials: pd.DataFrame,
    merges: pd.DataFrame | None,
    evals: pd.DataFrame | None,
) -> Path:
    """Rank every candidate and write `leaderboard.md`, `report.html` and `plots/*.png`."""
    ranking = ranking_for(sweep)
    board = candidate_board(sweep, merges, evals)
    order = list(board["candidate"]) if board is not None else None
    scores = set_scores(evals, ranking.metric, order) if board is not None else None
    metrics = metric_table(evals, order) if board is not None else None
    markdown = leaderboard_markdown(trials, sweep)
    if board is not None:
        markdown += "\n" + board_markdown(board, ranking, "All candidates")
        markdown += "\n" + sets_markdown(scores, ranking.metric)
        markdown += "\n" + metrics_markdown(metrics)
    write_atomic(run.leaderboard, markdown)
    images = save_plots(_figures(board, ranking), run.plots)
    if run.scaling_plot.is_file():
        images["scaling"] = run.scaling_plot.read_bytes()
    write_atomic(
        run.report,
        render_html(
            f"{sweep.name}: raysoup report",
            _sections(sweep, trials, merges, board, scores, metrics),
            images,
        ),
    )
    return run.report


def _figures(board, ranking: Ranking) -> dict:
    if board is None:
        return {}
    figures = {"metric_by_kind": plot_by_kind(board, ranking)}
    if merge_summary(board)["gain_vs_best"].notna().any():
        figures["merge_gain"] = plot_gains(board, ranking)
    return figures


def _sections(
    sweep: Sweep, trials: pd.DataFrame, merges, board, scores, metrics
) -> list[tuple[str, str]]:
    sections = []
    if board is not None:
        columns = [
            "rank",
            "candidate",
            "kind",
            "selection",
            "test",
            "gain_vs_best",
            "gain_vs_mean",
            "ingredients",
        ]
        note = (
            "<p class='note'>Ranked by the selection sets only; the test column is never "
            "used to choose. Gains are on test, positive when a merge beats its "
            "ingredients.</p>"
        )
        sections.append(("Leaderboard", note + table_html(board, columns)))
        sections.append(("Each evaluation set", table_html(scores, list(scores.columns))))
        sections.append(("Every metric", table_html(metrics, list(metrics.columns))))
        verdicts = merge_summary(board)
        if not verdicts.empty:
            sections.append(
                (
                    "Merges against their ingredients",
                    table_html(
                        verdicts,
                        [
                            "candidate",
                            "kind",
                            "test",
                            "gain_vs_best",
                            "beats_best",
                            "gain_vs_mean",
                            "beats_mean",
                            "ingredients",
                        ],
                    ),
                )
            )
    if merges is not None and (merges["status"] != "done").any():
        sections.append(
            (
                "Merges that did not run",
                table_html(merges[merges["status"] != "done"], ["candidate", "status", "error"]),
            )
        )
    columns = [
        "trial_id",
        "task",
        *sweep.search_space(),
        "data_size",
        "seed",
        "status",
        sweep.metric,
        "steps",
        "error",
    ]
    sections.append(("Trials", table_html(trials, list(dict.fromkeys(columns)))))
    return sections
