"""The scaling step of the report stage: `scaling.json`, `plots/scaling.png`, and their table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from engine.core.rundir import RunDir, write_atomic
from sweeps import Sweep
from sweeps.laws import LAWS
from sweeps.plots import scaling_plot
from sweeps.scaling import analyse


def write_scaling(table: pd.DataFrame, sweep: Sweep, run: RunDir) -> dict | None:
    """Fit the sweep's data-scale results and write them; None when it has no data-scale axis."""
    if sweep.data_scale is None:
        return None
    analysis = analyse(table, sweep)
    analysis["plot"] = None
    if any(group["points"] for group in analysis["groups"]):
        _write_plot(analysis, run.scaling_plot)
        analysis["plot"] = str(run.scaling_plot.relative_to(run.root))
    write_atomic(run.scaling, json.dumps(analysis, indent=2))
    return analysis


def _write_plot(analysis: dict, path: Path) -> None:
    # Drawn beside the old plot and moved over it, so a reader never sees half a file.
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
    scaling_plot(analysis, tmp)
    os.replace(tmp, path)


def load_scaling(run_dir: str | Path) -> dict | None:
    """The analysis in a run directory's `scaling.json`, or None if there is none."""
    path = RunDir(Path(run_dir)).scaling
    return json.loads(path.read_text()) if path.is_file() else None


def scaling_table(analysis: dict) -> Table:
    """One row per group: the fitted law, its held-out error, a prediction and the target size."""
    law = LAWS[analysis["law"]]
    out = Table(
        title=f"scaling: {analysis['metric']} ~ {law.formula}  (D = examples)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    target, at = analysis.get("target"), _shared_size(analysis)
    headers = (
        "group",
        "fit",
        "held-out error",
        f"{analysis['metric']} at D={at:,.0f}" if at else "prediction",
        f"D for {target:.4g}" if target is not None else "target",
    )
    for header in headers:
        out.add_column(header, no_wrap=header == "fit", overflow="fold")
    for group in analysis["groups"]:
        label = _short_label(group["group"])
        if group["status"] != "ok":
            out.add_row(label, "[yellow]no fit (below)[/]", "", "", "")
            continue
        values = {name: p["value"] for name, p in group["params"].items()}
        out.add_row(
            label,
            law.show(values),
            _holdout_cell(group["holdout"]),
            _prediction_cell(group["predictions"][0], at is None),
            _target_cell(group["target"]),
        )
    return out


def _short_label(group: dict) -> str:
    # The last part of a dotted path is enough on screen (`finetune.method` -> `method`).
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in group.items()) or "all"


def _shared_size(analysis: dict) -> float | None:
    """The size of the prediction the table shows, if every group predicts at the same one."""
    sizes = {g["predictions"][0]["data_size"] for g in analysis["groups"] if g["status"] == "ok"}
    return sizes.pop() if len(sizes) == 1 else None


def _holdout_cell(holdout: dict | None) -> str:
    if holdout is None:
        return "-"
    worst = max(holdout["errors"], key=lambda e: e["abs_error"])
    relative = f" ({worst['rel_error']:.1%})" if worst["rel_error"] is not None else ""
    return f"{worst['abs_error']:.3g}{relative}"


def _prediction_cell(prediction: dict, with_size: bool) -> str:
    if prediction["value"] is None:
        return "-"
    interval = ""
    if prediction["low"] is not None:
        interval = f" [{prediction['low']:.3g}, {prediction['high']:.3g}]"
    where = f" at D={prediction['data_size']:,.0f}" if with_size else ""
    return f"{prediction['value']:.4g}{interval}{where}"


def _target_cell(target: dict | None) -> str:
    if target is None:
        return "-"
    if target["data_size"] is None:
        return "unreachable"
    interval = ""
    if target["low"] is not None:
        interval = f" [{target['low']:,.0f}, {target['high']:,.0f}]"
    return f"{target['data_size']:,.0f}{interval}"


def _notes(analysis: dict) -> list[str]:
    """Why a target is unreachable, and why there are no intervals, once each."""
    notes = []
    for group in analysis["groups"]:
        target = group.get("target") or {}
        if target.get("reason"):
            notes.append(f"{_short_label(group['group'])}: target {target['reason']}")
    shared = {g["message"] for g in analysis["groups"] if g["status"] == "ok" and g["message"]}
    return notes + sorted(shared)


def print_scaling(run_dir: str | Path, console: Console) -> None:
    """Print the scaling table and where the plot is, if the run has a scaling analysis."""
    analysis = load_scaling(run_dir)
    if analysis is None:
        return
    if analysis.get("message"):
        console.print(f"[yellow]scaling: {analysis['message']}")
    if analysis["groups"]:
        console.print(scaling_table(analysis))
    for note in _notes(analysis):
        console.print(f"scaling: {note}", highlight=False)
    for group in analysis["groups"]:
        if group["status"] != "ok":  # in full: a table cell would cut it off
            label = _short_label(group["group"])
            console.print(f"[yellow]scaling: {label}: no fit: {group['message']}", highlight=False)
    if analysis.get("plot"):
        console.print(f"Scaling plot: {Path(run_dir) / analysis['plot']}  (fit in scaling.json)")
