"""The HTML report of a sweep: the leaderboard, the merges against their ingredients, the trials,
and plots, in one self-contained file (`report.html`, images inline) beside PNGs in `plots/`.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

from sweeps.leaderboard import KINDS, Ranking, format_cell, merge_summary

COLORS = {"trial": "#4C72B0", "checkpoint_average": "#55A868", "soup": "#C44E52",
          "task_merge": "#8172B2", "base": "#937860"}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_by_kind(board: pd.DataFrame, ranking: Ranking):
    """Each candidate's score as a dot, one column per kind (test score, else selection)."""
    plt = _figure()
    split = "test" if board["test"].notna().any() else "selection"
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    kinds = [k for k in KINDS if k in set(board["kind"])]
    rng = np.random.default_rng(0)
    for x, kind in enumerate(kinds):
        values = board.loc[board["kind"] == kind, split].dropna()
        ax.scatter(x + rng.uniform(-0.15, 0.15, len(values)), values, s=28,
                   color=COLORS.get(kind, "gray"), alpha=0.8)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel(f"{ranking.metric} ({split})")
    ax.set_title(f"{ranking.metric} by candidate kind "
                 f"({'higher' if ranking.higher_is_better else 'lower'} is better)")
    fig.tight_layout()
    return fig


def plot_gains(board: pd.DataFrame, ranking: Ranking):
    """Each merge's test gain over its best ingredient (right of zero: the merge is better)."""
    plt = _figure()
    merges = merge_summary(board).dropna(subset=["gain_vs_best"])
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.32 * max(len(merges), 1)))
    gains = merges["gain_vs_best"].astype(float).to_numpy()
    ax.barh(range(len(merges)), gains, color=["#55A868" if g > 0 else "#C44E52" for g in gains])
    ax.set_yticks(range(len(merges)), merges["candidate"], fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"gain in test {ranking.metric} over the best ingredient")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def save_plots(figures: dict, folder: Path) -> dict[str, bytes]:
    """Write each figure as `folder/<name>.png`; return the PNG bytes by name."""
    plt = _figure()
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for name, fig in figures.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        images[name] = buffer.getvalue()
        (folder / f"{name}.png").write_bytes(images[name])
    return images


def render_html(title: str, sections: list[tuple[str, str]], images: dict[str, bytes]) -> str:
    """A self-contained page: each (heading, HTML) section, then the images inline."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, content in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>\n{content}")
    for name, png in images.items():
        data = base64.b64encode(png).decode()
        body.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(name)}</figcaption></figure>")
    return PAGE.format(title=html.escape(title), body="\n".join(body))


def table_html(frame: pd.DataFrame, columns: list[str]) -> str:
    """A DataFrame as an HTML table with the project's cell formatting (values escaped)."""
    shown = frame[[c for c in columns if c in frame.columns]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.columns)
    rows = ["<tr>" + "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in row) + "</tr>"
            for row in shown.itertuples(index=False)]
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f4f4f4; }} td:nth-child(2), td:nth-child(3) {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; }}
p.note {{ color: #555; }}
</style></head><body>
{body}
</body></html>
"""
