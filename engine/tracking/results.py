"""The W&B runs of a sweep's merges and of its results (leaderboard, scores, scaling fit,
figures), logged by the driver after the stages that make them."""

from __future__ import annotations

import json

import pandas as pd
import wandb

from engine.core.rundir import RunDir
from engine.report.board import candidate_board, ranking_for
from engine.tracking.wandb_runs import Tracker, finite, table
from sweeps import Sweep
from sweeps.leaderboard import set_scores

RESULTS = "results"  # the ledger's key of the sweep's results run


def log_merges(tracker: Tracker, merges: pd.DataFrame | None) -> None:
    """One run per merge (`job_type: merge`): its recipe as config, the merged folder as its
    output artifact, its ingredients as the artifact's lineage. W&B refuses `use_artifact`
    offline, so the ingredients are named in the metadata; online they are also used."""
    for merge in [] if merges is None else merges.to_dict("records"):
        name = merge["candidate"]
        if tracker.ended(name):
            continue
        recipe = {k: _plain(merge.get(k)) for k in ("kind", "plan", "method", "group")}
        recipe |= {"parameters": _plain(merge.get("parameters")), "sweep": tracker.sweep.name}
        ingredients = [str(i) for i in _plain(merge.get("ingredients")) or []]
        run = tracker.start(name, name, "merge", recipe | {"ingredients": ingredients})
        if run is None:
            return
        if merge["status"] == "done":
            kept = [str(i) for i in _plain(merge.get("kept")) or []]
            _use_ingredients(run, ingredients)
            lineage = {"ingredients": ingredients, "kept": kept, "kind": merge["kind"]}
            tracker.log_model(run, name, merge["path"], lineage)
        state = "finished" if merge["status"] == "done" else "failed"
        tracker.end(name, state, {"raysoup/error": merge.get("error") or ""})


def _use_ingredients(run: wandb.Run, ingredients: list[str]) -> None:
    if run.settings.mode != "online":
        return
    for name in ingredients:  # the trials' runs logged their checkpoints under their names
        try:
            run.use_artifact(f"{name}:latest")
        except Exception:  # base or another merge: not every ingredient is an artifact
            continue


def log_results(
    tracker: Tracker,
    run_dir: RunDir,
    trials: pd.DataFrame,
    merges: pd.DataFrame | None,
    evals: pd.DataFrame | None,
) -> None:
    """One run for the sweep's results (`job_type: results`): the leaderboard, the scores per
    set, every evaluation row, the trials and merges as tables, the scaling fit, and the
    report's figures. Logged again by each `run` or `resume` that writes the report."""
    sweep = tracker.sweep
    tracker.end(RESULTS, "interrupted")  # never two open at once
    run = tracker.start(RESULTS, f"{sweep.name}-results", "results", _sweep_config(sweep))
    if run is None:
        return
    board = candidate_board(sweep, trials, merges, evals)
    tables = {"leaderboard": board, "trials": trials, "merges": merges, "evals": evals}
    if board is not None:
        metric = ranking_for(sweep).metric
        tables["set_scores"] = set_scores(evals, metric, list(board["candidate"]))
    logged = {name: table(frame) for name, frame in tables.items()}
    figures = {
        f"figures/{png.stem}": wandb.Image(str(png)) for png in sorted(run_dir.plots.glob("*.png"))
    }
    run.log({k: v for k, v in logged.items() if v is not None} | figures)
    if run_dir.scaling.is_file():
        run.summary["scaling"] = json.loads(run_dir.scaling.read_text())
    if board is not None and not board.empty:
        best = board.iloc[0].to_dict()
        run.summary.update({f"best/{k}": _plain(v) for k, v in best.items()})
    tracker.end(RESULTS, "finished")


def _sweep_config(sweep: Sweep) -> dict:
    return sweep.model_dump(mode="json", exclude={"submit", "tracking"}, exclude_none=True)


def _plain(value):
    """A table cell as plain JSON data (numpy arrays and scalars to lists and numbers)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float):
        return finite(value)
    return value
