"""The report's files: `leaderboard.md`, `report.html` and `plots/`.

Everything here reads the run directory's tables, so `raysoup report` rebuilds the same report
from a finished (or interrupted) run without Ray.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from engine.core.rundir import RunDir, write_atomic
from engine.report.board import candidate_board, ranking_for, winners
from engine.report.curves import learning_curves
from engine.train.table import leaderboard_markdown
from sweeps import Sweep
from sweeps.leaderboard import (
    Ranking,
    board_markdown,
    interval_cell,
    merge_summary,
    metric_table,
    metrics_markdown,
    presentable,
    recommendation,
    set_scores,
    sets_markdown,
    winners_markdown,
)
from sweeps.plots import (
    plot_against,
    plot_by_kind,
    plot_curves,
    plot_gains,
    plot_lineage,
    plot_progress,
    save_plots,
)
from sweeps.report import figure_html, render_html, table_html
from sweeps.trials import search_progress


def write_report(
    sweep: Sweep,
    run: RunDir,
    trials: pd.DataFrame,
    merges: pd.DataFrame | None,
    evals: pd.DataFrame | None,
) -> Path:
    """Rank every candidate and write `leaderboard.md`, `report.html` and `plots/*.png`."""
    ranking = ranking_for(sweep)
    board = candidate_board(sweep, trials, merges, evals)
    best = winners(sweep, evals)
    order = None if board is None else list(board["candidate"])
    scores = None if board is None else set_scores(evals, ranking.metric, order)
    metrics = None if board is None else metric_table(evals, order)
    write_atomic(run.leaderboard, _markdown(sweep, trials, board, best, scores, metrics, ranking))
    figures = _figures(sweep, trials, board, ranking)
    images = save_plots({name: fig for name, (_, fig) in figures.items()}, run.plots)
    titles = {name: title for name, (title, _) in figures.items()}
    if run.scaling_plot.is_file():
        images["scaling"] = run.scaling_plot.read_bytes()
        titles["scaling"] = "Scaling law: the metric against training examples, with its fit"
    shown = {name: figure_html(png, titles[name]) for name, png in images.items()}
    sections = _sections(sweep, trials, merges, board, best, scores, metrics, shown)
    write_atomic(run.report, render_html(f"{sweep.name}: raysoup report", sections))
    return run.report


def _markdown(sweep: Sweep, trials, board, best, scores, metrics, ranking: Ranking) -> str:
    markdown = leaderboard_markdown(trials, sweep)
    if board is None:
        return markdown
    markdown += "\n## Use this model\n\n" + "\n\n".join(recommendation(board, best, ranking))
    searched = list(sweep.search_space())
    markdown += "\n\n" + board_markdown(board, ranking, "All candidates", searched)
    if len(best) > 1:
        markdown += "\n" + winners_markdown(best, ranking.metric)
    return (
        markdown + "\n" + sets_markdown(scores, ranking.metric) + "\n" + metrics_markdown(metrics)
    )


def _figures(sweep: Sweep, trials: pd.DataFrame, board, ranking: Ranking) -> dict:
    """The report's figures by file name, each with its title in words."""
    figures = {}
    metric = sweep.metric if sweep.metric in trials else "eval_loss"
    curves = learning_curves(trials, metric)
    if not curves.empty and curves[metric].notna().any():
        figures["learning_curves"] = (
            f"Learning curves: {metric} of each trial at every report",
            plot_curves(curves, metric),
        )
    searched = sweep.scheduler.stops_trials() or sweep.search.learns()
    progress = search_progress(trials, metric, sweep.direction()) if searched else []
    if len(progress) > 1:
        figures["search_progress"] = (
            f"The best {metric} so far against the optimizer steps spent, as trials ended",
            plot_progress(progress, metric),
        )
    if _cloned(trials):
        figures["lineage"] = (
            "Population-based training: each trial's steps, and which trial it cloned when",
            plot_lineage(trials),
        )
    if board is None:
        return figures
    points = board[board["kind"] == "trial"].dropna(subset=["selection"])
    axes = {field: field for field in sweep.search_space()}
    axes.update({"data_size": "training examples"} if sweep.data_scale else {})
    for column, label in axes.items():
        if column in points and points[column].nunique() > 1:
            figures[f"by_{column}"] = (
                f"{ranking.metric} of each trial on the selection sets, by {label}",
                plot_against(points, column, ranking, label, log=column == "data_size" or None),
            )
    figures["metric_by_kind"] = (
        f"{ranking.metric} of every candidate, by kind (base, trials, merges)",
        plot_by_kind(board, ranking),
    )
    if merge_summary(board)["gain_vs_best"].notna().any():
        figures["merge_gain"] = (
            f"Each merge's gain in test {ranking.metric} over its best ingredient",
            plot_gains(board, ranking),
        )
    return figures


def _sections(
    sweep: Sweep, trials: pd.DataFrame, merges, board, best, scores, metrics, figures: dict
) -> list[tuple[str, str]]:
    """The page in reading order: the answer first, then the evidence."""
    sections = []
    if board is not None:
        ranking = ranking_for(sweep)
        advice = recommendation(board, best, ranking)
        sections.append(
            ("Use this model", "".join(f"<p class='advice'>{html.escape(a)}</p>" for a in advice))
        )
        if len(best) > 1:
            columns = ["task", "candidate", "kind", "selection", "test", "path"]
            sections.append(("Each task's winner", table_html(_with_intervals(best), columns)))
        shown = presentable(board, list(sweep.search_space()))
        sections.append(("Leaderboard", LEADERBOARD_NOTE + table_html(shown, list(shown.columns))))
    searched = "".join(v for k, v in figures.items() if k.startswith("by_"))
    for heading, content in (
        ("How the trials trained", figures.get("learning_curves", "")),
        ("How the search spent its compute", figures.get("search_progress", "")),
        ("Population-based training", figures.get("lineage", "")),
        ("Scores against what the sweep varied", searched),
        ("Every candidate by kind", figures.get("metric_by_kind", "")),
        ("Scaling", figures.get("scaling", "")),
    ):
        if content:
            sections.append((heading, content))
    if board is not None:
        sections += _merge_sections(board, merges, figures)
        sections.append(("Each evaluation set", table_html(scores, list(scores.columns))))
        sections.append(("Every metric", table_html(metrics, list(metrics.columns))))
    stopped = trials[trials["status"] == "stopped"]
    if len(stopped):
        columns = ["name", "task", *sweep.search_space(), "stopped_by", "stopped_at", "steps",
                   sweep.metric, "checkpoint"]  # fmt: skip
        heading = f"Trials stopped early ({len(stopped)} of {len(trials)})"
        content = STOPPED_NOTE + table_html(stopped, list(dict.fromkeys(columns)))
        sections.append((heading, content))
    columns = ["name", "task", *sweep.search_space(), "data_size", "seed", "status",
               sweep.metric, "eval_loss", "steps", "flag", "error"]  # fmt: skip
    if _cloned(trials):
        columns.append("cloned")
    sections.append(("Trials", table_html(trials, list(dict.fromkeys(columns)))))
    return sections


def _cloned(trials: pd.DataFrame) -> bool:
    """Whether population-based training made any trial clone another."""
    return "cloned" in trials and trials["cloned"].map(lambda c: c is not None and len(c) > 0).any()


def _merge_sections(board, merges, figures: dict[str, str]) -> list[tuple[str, str]]:
    sections = []
    verdicts = merge_summary(board)
    if not verdicts.empty:
        columns = ["candidate", "kind", "test", "gain_vs_best", "beats_best", "gain_vs_mean",
                   "beats_mean", "ingredients"]  # fmt: skip
        content = figures.get("merge_gain", "") + table_html(verdicts, columns)
        sections.append(("Merges against their ingredients", content))
    if merges is not None and (merges["status"] != "done").any():
        failed = merges[merges["status"] != "done"]
        sections.append(("Merges that did not run", table_html(failed, ["candidate", "status",
                                                                          "error"])))  # fmt: skip
    return sections


def _with_intervals(frame: pd.DataFrame) -> pd.DataFrame:
    shown = frame.copy()
    for split in ("selection", "test"):
        shown[split] = [interval_cell(row, split) for row in frame.to_dict("records")]
    return shown


LEADERBOARD_NOTE = (
    "<p class='note'>Ranked by the selection sets only; the test column is never used to "
    "choose. Scores show their 95% interval (±); <em>tied</em>: the interval overlaps the "
    "leader's. Gains are on test, positive when a merge beats its ingredients. Click a "
    "column's header to sort by it.</p>"
)

STOPPED_NOTE = (
    "<p class='note'>The scheduler stopped these trials at the step in <em>stopped_at</em>; "
    "each keeps its newest checkpoint (<em>steps</em>) as its result, a candidate like any "
    "other.</p>"
)
