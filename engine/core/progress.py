"""What the user sees while a stage runs: spinners, stage timings and job bars (rich only)."""

from __future__ import annotations

import contextlib
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.core.findings import Findings


@contextlib.contextmanager
def stage(message: str, show: bool = True):
    """A spinner while a stage runs, then one line with how long it took."""
    if not show:
        yield
        return
    console, started = Console(stderr=True), time.time()
    with console.status(message + " ..."):
        yield
    finished(message, started, console)


def finished(message: str, started: float, console: Console | None = None) -> None:
    """The line a stage prints when it ends: what it did and how long it took."""
    (console or Console(stderr=True)).print(
        f"[green]done[/] {message} ({time.time() - started:.1f} s)"
    )


@contextlib.contextmanager
def job_bar(message: str, total: int, show: bool = True):
    """A bar for a stage of `total` jobs; yields `done(name, status)` to call as each ends."""
    if not show or not total:
        yield lambda name, status: None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    task = progress.add_task(message, total=total)

    def done(name: str, status: str) -> None:
        progress.advance(task)
        if status not in ("done", "ok"):
            progress.console.print(f"[red]{status}[/] {name}")

    with progress:
        yield done


def show_findings(found: Findings, console: Console | None = None) -> None:
    """Preflight's notes and warnings, before any work starts."""
    console = console or Console(stderr=True)
    for note in found.notes:
        console.print(f"[dim]check[/] {note}", highlight=False)
    for warning in found.warnings:
        console.print(f"[yellow]warning[/] {warning}", highlight=False)


def warn(message: str, console: Console | None = None) -> None:
    """A warning while the sweep runs (it goes on); on one line, so a path in it can be copied."""
    (console or Console(stderr=True)).print(
        f"[yellow]warning[/] {escape(message)}", highlight=False, soft_wrap=True
    )
