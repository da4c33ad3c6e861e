"""Plots of analysis results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sweeps.laws import LAWS


def scaling_plot(analysis: dict, path: str | Path) -> Path:
    """Draw `analysis` (from `sweeps.scaling.analyse`) to a PNG at `path`.

    Per group: the mean at each size with the seed spread (min to max) as error bars, the fitted
    curve, and predictions with their intervals; sizes beyond the largest measured are shaded as
    extrapolation.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    law = LAWS[analysis["law"]]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    measured, reach = 0.0, 0.0
    for index, group in enumerate(analysis["groups"]):
        color = f"C{index % 10}"
        sizes = _draw_points(ax, group, color)
        measured, reach = max(measured, sizes.max()), max(reach, sizes.max())
        if group["status"] == "ok":
            reach = max(reach, _draw_fit(ax, group, law, sizes, color))
    if reach > measured:
        ax.axvspan(measured, reach, color="0.9", zorder=0, label="extrapolation")
    if analysis.get("target") is not None:
        ax.axhline(analysis["target"], color="0.4", linestyle=":", label="target")
    ax.set_xscale("log")
    # Sizes read best as plain counts; minor labels would collide on a short log axis.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training examples (D)")
    ax.set_ylabel(analysis["metric"])
    ax.set_title(f"{analysis['metric']} ~ {analysis['formula']}")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _draw_points(ax, group: dict, color: str) -> np.ndarray:
    points = group["points"]
    sizes = np.array([p["data_size"] for p in points], dtype=float)
    mean = np.array([p["mean"] for p in points], dtype=float)
    spread = np.array([[p["mean"] - p["min"] for p in points],
                       [p["max"] - p["mean"] for p in points]], dtype=float)
    label = group["label"] if group["status"] == "ok" else f"{group['label']} (no fit)"
    ax.errorbar(sizes, mean, yerr=spread, fmt="o", color=color, capsize=3, label=label)
    return sizes


def _draw_fit(ax, group: dict, law, sizes: np.ndarray, color: str) -> float:
    """The fitted curve (dashed where extrapolated) and the predictions; returns the last x."""
    params = np.array([group["params"][name]["value"] for name in law.params], dtype=float)
    predictions = group["predictions"]
    last = max([sizes.max()] + [p["data_size"] for p in predictions])
    inside = np.geomspace(sizes.min(), sizes.max(), 100)
    ax.plot(inside, law.predict(inside, params), color=color)
    if last > sizes.max():
        beyond = np.geomspace(sizes.max(), last, 100)
        ax.plot(beyond, law.predict(beyond, params), color=color, linestyle="--")
    for p in predictions:
        if p["value"] is None:
            continue
        err = None
        if p["low"] is not None:
            err = [[p["value"] - p["low"]], [p["high"] - p["value"]]]
        ax.errorbar([p["data_size"]], [p["value"]], yerr=err, fmt="*", color=color,
                    markersize=10, capsize=3)
    return last
