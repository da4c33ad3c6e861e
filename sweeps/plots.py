"""Plots of analysis results (matplotlib, Agg backend: no display needed): the scaling fit and
the report's figures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from sweeps.laws import LAWS
from sweeps.leaderboard import KINDS, Ranking, merge_summary


def pyplot():
    """matplotlib's pyplot on the Agg backend, imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def scaling_plot(analysis: dict, path: str | Path) -> Path:
    """Draw `analysis` (from `sweeps.scaling.analyse`) to a PNG at `path`.

    Per group: the mean at each size with the seed spread (min to max) as error bars, the fitted
    curve, and predictions with their intervals; sizes beyond the largest measured are shaded as
    extrapolation.
    """
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plt = pyplot()
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
    spread = np.array(
        [[p["mean"] - p["min"] for p in points], [p["max"] - p["mean"] for p in points]],
        dtype=float,
    )
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
        ax.errorbar(
            [p["data_size"]], [p["value"]], yerr=err, fmt="*", color=color, markersize=10, capsize=3
        )
    return last


COLORS = {
    "trial": "#4C72B0",
    "checkpoint_average": "#55A868",
    "soup": "#C44E52",
    "task_merge": "#8172B2",
    "base": "#937860",
}


def plot_by_kind(board: pd.DataFrame, ranking: Ranking):
    """Each candidate's score as a dot, one column per kind (test score, else selection)."""
    plt = pyplot()
    split = "test" if board["test"].notna().any() else "selection"
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    kinds = [k for k in KINDS if k in set(board["kind"])]
    rng = np.random.default_rng(0)
    for x, kind in enumerate(kinds):
        values = board.loc[board["kind"] == kind, split].dropna()
        ax.scatter(
            x + rng.uniform(-0.15, 0.15, len(values)),
            values,
            s=28,
            color=COLORS.get(kind, "gray"),
            alpha=0.8,
        )
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel(f"{ranking.metric} ({split})")
    ax.set_title(
        f"{split.capitalize()} {ranking.metric} of every candidate, by kind "
        f"({'higher' if ranking.higher_is_better else 'lower'} is better)"
    )
    fig.tight_layout()
    return fig


def plot_gains(board: pd.DataFrame, ranking: Ranking):
    """Each merge's test gain over its best ingredient (right of zero: the merge is better)."""
    plt = pyplot()
    merges = merge_summary(board).dropna(subset=["gain_vs_best"])
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.32 * max(len(merges), 1)))
    gains = merges["gain_vs_best"].astype(float).to_numpy()
    ax.barh(range(len(merges)), gains, color=["#55A868" if g > 0 else "#C44E52" for g in gains])
    ax.set_yticks(range(len(merges)), merges["candidate"], fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"gain in test {ranking.metric} over the best ingredient")
    ax.set_title("Merges against their best ingredient (right of zero: the merge is better)")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def plot_curves(curves: pd.DataFrame, metric: str):
    """Each trial's `metric` at every report: one line per trial (one colour per task when there
    are many trials, with a legend of tasks), legend outside the axes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    tasks = sorted(curves["task"].dropna().unique())
    many = curves["name"].nunique() > 10
    for index, (name, curve) in enumerate(curves.groupby("name", sort=True)):
        color = f"C{tasks.index(curve['task'].iloc[0]) % 10}" if many else f"C{index % 10}"
        ax.plot(curve["step"], curve[metric], marker="o", markersize=3, linewidth=1,
                color=color, alpha=0.8, label=None if many else name)  # fmt: skip
    if many:
        for index, task in enumerate(tasks):
            ax.plot([], [], color=f"C{index % 10}", label=task)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title(f"Learning curves: {metric} of each trial as it trained")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return fig


def plot_progress(progress: pd.DataFrame, metric: str):
    """The best `metric` so far against the optimizer steps spent so far, one point per trial
    as it ended (`sweeps.trials.search_progress`)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.step(progress["compute"], progress["best"], where="post", color="C0")
    ax.plot(progress["compute"], progress["best"], "o", markersize=3, color="C0")
    ax.set_xlabel("optimizer steps spent, summed over trials (in the order trials ended)")
    ax.set_ylabel(f"best {metric} so far")
    ax.set_title(f"Best {metric} against compute spent")
    ax.grid(True, alpha=0.3)
    return fig


def plot_lineage(trials: pd.DataFrame):
    """Population-based training as a graph: one line per trial over the steps it trained, and
    an arrow from the trial it cloned, at the step it cloned it (`trials.parquet`'s `cloned`)."""
    plt = pyplot()
    names = list(trials["name"])
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.45 * len(names) + 1)))
    for row in trials.itertuples():
        y = names.index(row.name)
        ax.plot([0, row.steps or 0], [y, y], color="C0", linewidth=2, alpha=0.6)
        for clone in row.cloned:
            source, step = clone.rsplit("@", 1)
            if source in names:
                ax.annotate(
                    "", xy=(int(step), y), xytext=(int(step), names.index(source)),
                    arrowprops={"arrowstyle": "->", "color": "C3"},
                )  # fmt: skip
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("optimizer step")
    ax.set_title("Population-based training: who cloned whom, and when (arrows: source to clone)")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def plot_against(points: pd.DataFrame, column: str, ranking: Ranking, label: str, log=None):
    """Each trial's selection score against one of its values (a searched field, the data
    size), with its 95% interval; one colour per task, each task's points nudged sideways so
    no interval hides another. A numeric axis is logarithmic when `log`, or by default when
    it spans ten times or more; a text value gets one position per value."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    x = points[column]
    numeric = pd.api.types.is_numeric_dtype(x)
    values = sorted(x.dropna().unique(), key=str)
    log = numeric and x.min() > 0 and (log if log is not None else x.max() >= 10 * x.min())
    groups = list(points.groupby("task", sort=True, dropna=False))
    for index, (task, rows) in enumerate(groups):
        nudge = (index - (len(groups) - 1) / 2) * 0.04
        where = (
            rows[column].map(values.index) + nudge
            if not numeric
            else (
                rows[column] * (1 + nudge)
                if log
                else rows[column] + nudge * np.ptp(x.to_numpy(float))
            )
        )
        spread = [
            rows["selection"] - rows["selection_low"],
            rows["selection_high"] - rows["selection"],
        ]
        ax.errorbar(where, rows["selection"], yerr=np.abs(np.asarray(spread, float)), fmt="o",
                    color=f"C{index % 10}", capsize=3, alpha=0.8, label=str(task))  # fmt: skip
    if log:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        if len(values) <= 8:  # few values: tick each one, as a plain number
            ax.set_xticks(values)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.4g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
    if not numeric:
        ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(label)
    ax.set_ylabel(f"{ranking.metric} (selection)")
    ax.set_title(f"{ranking.metric} on the selection sets by {label}")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return fig


def _legend_outside(ax) -> None:
    """A legend right of the axes, so it never hides a point."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.figure.tight_layout()


def save_plots(figures: dict, folder: Path) -> dict[str, bytes]:
    """Write each figure as `folder/<name>.png`; return the PNG bytes by name."""
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for name, fig in figures.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        images[name] = buffer.getvalue()
        (folder / f"{name}.png").write_bytes(images[name])
    return images
