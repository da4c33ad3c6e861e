"""The HTML report of a sweep, in one self-contained file (`report.html`: images inline, plain
JavaScript, nothing fetched from the network): sections of text, tables a click sorts, and
figures (drawn by `sweeps.plots`) with titles in words.
"""

from __future__ import annotations

import base64
import html

import pandas as pd

from sweeps.leaderboard import format_cell


def render_html(title: str, sections: list[tuple[str, str]]) -> str:
    """A self-contained page of (heading, HTML) sections."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f"<h2>{html.escape(heading)}</h2>\n{content}" for heading, content in sections]
    return HEAD.format(title=html.escape(title)) + "\n".join(body) + SCRIPT + "</body></html>\n"


def figure_html(png: bytes, title: str) -> str:
    """One figure, inline, with its title in words as the caption and the image's alt text."""
    data = base64.b64encode(png).decode()
    return (
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
    )


def table_html(frame: pd.DataFrame, columns: list[str]) -> str:
    """A DataFrame as an HTML table with the project's cell formatting (values escaped); a click
    on a column's header sorts by it."""
    shown = frame[[c for c in columns if c in frame.columns]]
    head = "".join(f'<th title="click to sort">{html.escape(c)}</th>' for c in shown.columns)
    rows = [
        "<tr>" + "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in row) + "</tr>"
        for row in shown.itertuples(index=False)
    ]
    return (
        f'<table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 76em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; display: block;
         overflow-x: auto; max-width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f4f4f4; cursor: pointer; user-select: none; }}
th[data-order="asc"]::after {{ content: " \\25B2"; }}
th[data-order="desc"]::after {{ content: " \\25BC"; }}
td {{ white-space: nowrap; }} td:nth-child(2), td:nth-child(3) {{ text-align: left; }}
td:last-child {{ white-space: normal; text-align: left; }}
figure {{ display: inline-block; margin: 0.5em 1em 1em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9em; }}
p.note {{ color: #555; }} p.advice {{ font-size: 1.1em; }}
</style></head><body>
"""

# Sorts a table by the clicked column: numbers as numbers (a cell like `0.62 ±0.09` by its
# first number), other text alphabetically, empty cells last; a second click reverses.
SCRIPT = """
<script>
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var ascending = th.dataset.order !== "asc";
      table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
      th.dataset.order = ascending ? "asc" : "desc";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var text = row.cells[column].textContent.trim();
        var number = parseFloat(text);
        return { empty: text === "", number: isNaN(number) ? null : number, text: text };
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x.empty !== y.empty) { return x.empty ? 1 : -1; }
        var order = (x.number !== null && y.number !== null) ? x.number - y.number
          : x.text.localeCompare(y.text);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
</script>
"""
