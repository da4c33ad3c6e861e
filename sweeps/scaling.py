"""Scaling-law analysis of a data-scale sweep: fit, held-out check, bootstrap, predictions.

Works on the trial table (`trials.parquet` as a DataFrame) with numpy and scipy only, so it
runs without Ray or torch. `analyse` returns a JSON-ready dict, written as `scaling.json`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sweeps.laws import LAWS, FitError, Law
from sweeps.scale import ScalingConfig

SIZE = "data_size"
TASK = "task"
PREDICT_FACTOR = 10


def analyse(trials, sweep) -> dict:
    """The scaling analysis of `sweep`'s finished trials, one curve per group.

    Groups are the task (if the table has a `task` column) and every swept field; the data
    size is the x axis and seeds are repeats at one size.
    """
    cfg: ScalingConfig = sweep.scaling
    metric = cfg.metric or sweep.metric
    law = LAWS[cfg.law_for(metric)]
    out = {
        "metric": metric,
        "law": law.name,
        "formula": law.formula,
        "x": "examples (D)",
        "holdout": cfg.holdout,
        "confidence": cfg.confidence,
        "target": cfg.target,
        "groups": [],
    }
    if metric not in trials.columns:
        out["message"] = f"trials.parquet has no column {metric!r} to fit (scaling.metric)"
        return out
    done = trials[(trials["status"] == "done") & trials[metric].notna() & trials[SIZE].notna()]
    if done.empty:
        out["message"] = "no finished trials with a data size and a value of " + metric
        return out
    keys = group_columns(trials, sweep)
    for values, frame in done.groupby(keys, dropna=False, sort=True) if keys else [((), done)]:
        group = dict(zip(keys, _plain(values if isinstance(values, tuple) else (values,))))
        curve = fit_curve(
            frame[SIZE].to_numpy(float), frame[metric].to_numpy(float), law, cfg, _tokens(frame)
        )
        out["groups"].append({"group": group, "label": group_label(group), **curve})
    return out


def sizes_problem(sweep) -> str | None:
    """Why the sweep's data sizes cannot give a scaling fit (None when they can, or when the
    sweep has no data-scale axis)."""
    if sweep.data_scale is None:
        return None
    cfg: ScalingConfig = sweep.scaling
    law = LAWS[cfg.law_for(cfg.metric or sweep.metric)]
    sizes, need = len(set(sweep.data_scale)), len(law.params) + cfg.holdout
    if sizes >= need:
        return None
    return (
        f"data_scale: {sizes} distinct data size(s), so no scaling fit will be made: the "
        f"{law.name} law needs at least {need} ({len(law.params)} parameters + {cfg.holdout} "
        "held out); add sizes to data_scale or lower scaling.holdout"
    )


def group_columns(trials, sweep) -> list[str]:
    """The columns that tell curves apart: task, then every swept field present in the table."""
    keys = [TASK] if TASK in trials.columns else []
    return keys + [k for k in sweep.search_space() if k in trials.columns and k != TASK]


def group_label(group: dict) -> str:
    """`task=a, finetune.method=full`, or `all trials` when nothing is swept."""
    return ", ".join(f"{k}={v}" for k, v in group.items()) or "all trials"


def fit_curve(
    sizes: np.ndarray,
    values: np.ndarray,
    law: Law,
    cfg: ScalingConfig,
    tokens: np.ndarray | None = None,
) -> dict:
    """Fit `law` to one curve (one value per trial; several per size are seeds).

    The law is fitted to the mean at each size. Parameters and predictions use every size; the
    held-out error comes from a second fit without the `cfg.holdout` largest sizes.
    """
    by_size = _by_size(sizes, values)
    points = _points(by_size, sizes, tokens)
    need = len(law.params) + cfg.holdout
    if len(by_size) < need:
        return {
            "status": "too_few_sizes",
            "points": points,
            "message": f"{len(by_size)} distinct data size(s); the {law.name} law needs at "
            f"least {need} ({len(law.params)} parameters + {cfg.holdout} held "
            "out): add sizes to data_scale or lower scaling.holdout",
        }
    d = np.array(sorted(by_size))
    y = np.array([by_size[s].mean() for s in d])
    try:
        params = law.fit(d, y)
        held = _holdout(d, y, law, cfg.holdout)
    except FitError as err:
        return {"status": "failed", "points": points, "message": str(err)}
    draws, note = _bootstrap(by_size, law, params, cfg)
    return {
        "status": "ok",
        "points": points,
        "message": note,
        "params": _with_intervals(law.params, params, draws["params"], cfg),
        "holdout": held,
        "predictions": _predictions(d, law, params, draws["params"], cfg),
        "target": _target(law, params, draws["params"], cfg),
    }


def _by_size(sizes: np.ndarray, values: np.ndarray) -> dict[float, np.ndarray]:
    return {float(s): values[sizes == s] for s in np.unique(sizes)}


def _points(by_size: dict, sizes: np.ndarray, tokens: np.ndarray | None) -> list[dict]:
    points = []
    for size, vals in sorted(by_size.items()):
        point = {
            SIZE: _number(size),
            "mean": _number(vals.mean()),
            "min": _number(vals.min()),
            "max": _number(vals.max()),
            "std": _number(vals.std(ddof=1)) if len(vals) > 1 else None,
            "seeds": len(vals),
            "values": _numbers(vals),
        }
        if tokens is not None:
            point["tokens_seen"] = _number(np.nanmean(tokens[sizes == size]))
        points.append(point)
    return points


def _holdout(d: np.ndarray, y: np.ndarray, law: Law, k: int) -> dict | None:
    """Fit without the k largest sizes and compare its predictions with what they measured."""
    if k == 0:
        return None
    params = law.fit(d[:-k], y[:-k])
    predicted = law.predict(d[-k:], params)
    errors = [
        {
            SIZE: _number(s),
            "actual": _number(a),
            "predicted": _number(p),
            "abs_error": _number(abs(p - a)),
            "rel_error": _number(abs(p - a) / abs(a)) if a else None,
        }
        for s, a, p in zip(d[-k:], y[-k:], predicted)
    ]
    return {
        "fit_sizes": _numbers(d[:-k]),
        "params": dict(zip(law.params, _numbers(params))),
        "errors": errors,
        "mean_abs_error": _number(np.mean(np.abs(predicted - y[-k:]))),
    }


def _bootstrap(by_size: dict, law: Law, params: np.ndarray, cfg: ScalingConfig):
    """Refits on seeds resampled with replacement at each size, started from the full fit."""
    seeds = min(len(v) for v in by_size.values())
    if cfg.bootstrap == 0 or seeds < 2:
        reason = (
            "bootstrap is off (scaling.bootstrap: 0)"
            if cfg.bootstrap == 0
            else "one seed at some size: no intervals (add seeds for bootstrap intervals)"
        )
        return {"params": None}, reason
    rng = np.random.default_rng(cfg.seed)
    d = np.array(sorted(by_size))
    fits = []
    for _ in range(cfg.bootstrap):
        y = np.array([rng.choice(by_size[s], len(by_size[s])).mean() for s in d])
        try:
            fits.append(law.fit(d, y, start=params))
        except FitError:
            continue
    if len(fits) < cfg.bootstrap / 2:
        return {
            "params": None
        }, f"only {len(fits)} of {cfg.bootstrap} bootstrap fits worked: no intervals"
    return {"params": np.array(fits)}, None


def _interval(samples: np.ndarray | None, cfg: ScalingConfig) -> tuple:
    if samples is None:
        return None, None
    finite = samples[np.isfinite(samples)]
    if len(finite) < len(samples) / 2:
        return None, None
    tail = 50 * (1 - cfg.confidence)
    low, high = np.percentile(finite, [tail, 100 - tail])
    return _number(low), _number(high)


def _with_intervals(names, params, draws, cfg) -> dict:
    return {
        name: dict(
            zip(
                ("value", "low", "high"),
                (_number(params[i]), *_interval(None if draws is None else draws[:, i], cfg)),
            )
        )
        for i, name in enumerate(names)
    }


def _predictions(d: np.ndarray, law: Law, params, draws, cfg: ScalingConfig) -> list[dict]:
    at = cfg.predict_at or [PREDICT_FACTOR * float(d.max())]
    out = []
    for size in at:
        samples = None if draws is None else np.array([law.predict(size, p) for p in draws])
        low, high = _interval(samples, cfg)
        out.append(
            {
                SIZE: _number(size),
                "value": _number(law.predict(size, params)),
                "low": low,
                "high": high,
                "extrapolated": bool(size > d.max()),
            }
        )
    return out


def _target(law: Law, params, draws, cfg: ScalingConfig) -> dict | None:
    if cfg.target is None:
        return None
    size, reason = law.invert(cfg.target, params)
    samples = None
    if draws is not None:
        samples = np.array([law.invert(cfg.target, p)[0] or np.nan for p in draws])
    low, high = _interval(samples, cfg)
    return {"value": cfg.target, SIZE: _number(size), "low": low, "high": high, "reason": reason}


def _tokens(frame) -> np.ndarray | None:
    if "tokens_seen" not in frame.columns:
        return None
    return frame["tokens_seen"].to_numpy(float)


def _number(x: Any) -> float | None:
    """A JSON number: ints stay ints, NaN and infinities become None."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


def _numbers(values) -> list:
    return [_number(v) for v in values]


def _plain(values) -> list:
    """Group values as plain Python values (JSON-ready); a missing value (NaN) is None."""
    values = [v.item() if hasattr(v, "item") else v for v in values]
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]
