"""The trials' learning curves: every result a trial reported (Tune's `result.json` in its
folder), read back from the run directory without Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

CURVE_COLUMNS = ["name", "task", "step", "eval_loss", "train_loss"]


def learning_curves(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per report of every trial: its name, task, step, losses and `metric`."""
    frames = [_curve(row, metric) for row in trials.to_dict("records") if row.get("path")]
    columns = list(dict.fromkeys([*CURVE_COLUMNS, metric]))
    frames = [f for f in frames if not f.empty]
    return (
        pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    )


def _curve(trial: dict, metric: str) -> pd.DataFrame:
    path = Path(trial["path"]) / "result.json"
    if not path.is_file():
        return pd.DataFrame()
    rows = []
    for line in path.read_text().splitlines():
        try:
            result = json.loads(line)
        except ValueError:  # a line cut short by a killed trial
            continue
        if "step" in result:
            rows.append({k: result.get(k) for k in (*CURVE_COLUMNS[2:], metric)})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame.insert(0, "task", trial["task"])
        frame.insert(0, "name", trial["name"])
        frame = frame.drop_duplicates("step", keep="last").sort_values("step")
    return frame
