"""The HTML report of a sweep: the leaderboard, the merges against their ingredients, the trials,
and plots (drawn by `sweeps.plots`), in one self-contained file (`report.html`, images inline).
"""

from __future__ import annotations

import base64
import html

import pandas as pd

from sweeps.leaderboard import format_cell


def render_html(title: str, sections: list[tuple[str, str]], images: dict[str, bytes]) -> str:
    """A self-contained page: each (heading, HTML) section, then the images inline."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, content in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>\n{content}")
    for name, png in images.items():
        data = base64.b64encode(png).decode()
        body.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>"
        )
    return PAGE.format(title=html.escape(title), body="\n".join(body))


def table_html(frame: pd.DataFrame, columns: list[str]) -> str:
    """A DataFrame as an HTML table with the project's cell formatting (values escaped)."""
    shown = frame[[c for c in columns if c in frame.columns]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.columns)
    rows = [
        "<tr>" + "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in row) + "</tr>"
        for row in shown.itertuples(index=False)
    ]
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
