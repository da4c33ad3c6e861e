"""Running a sweep: prepare, train, merge, evaluate, report, in that order. Each stage reads and
writes the run directory, so an interrupted sweep resumes where it stopped."""

from __future__ import annotations

import contextlib
from pathlib import Path

from engine import preflight
from engine.core.models import base_model_path
from engine.core.progress import show_findings, stage
from engine.core.rundir import RunDir
from engine.core.session import ray_session
from engine.evaluate.stage import eval_stage
from engine.merge.stage import EarlyMerges, merge_stage
from engine.prepare.sizes import task_sizes
from engine.prepare.stage import prepare
from engine.report.files import write_report
from engine.report.result import SweepResult, load_result
from engine.report.scaling import write_scaling
from engine.train.experiment import tuner
from engine.train.progress import TrialProgress
from engine.train.table import trials_table, write_results
from sweeps import Sweep

__all__ = ["Interrupted", "SweepResult", "load_result", "resume", "run"]


class Interrupted(KeyboardInterrupt):
    """The sweep was stopped (Ctrl-C) before its stages ended; `raysoup resume` finishes it."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted; finish the sweep with `raysoup resume {run_dir}`")
        self.run_dir = run_dir


def run(sweep: Sweep, storage: str | None = None, progress: bool = True) -> SweepResult:
    """Validate, then run every stage of `sweep` in `<storage>/<sweep.name>`.

    Re-running the same sweep into the same folder continues it; a different sweep is refused.
    """
    found = preflight.check(sweep)
    if progress:
        show_findings(found)
    run_dir = RunDir.for_sweep(sweep, storage)
    sweep = sweep.model_copy(update={"storage": str(run_dir.root.parent)})
    run_dir.claim(sweep)
    return _execute(sweep, run_dir, progress)


def resume(run_dir: str | Path, progress: bool = True) -> SweepResult:
    """Finish an interrupted sweep; trials that finished are not run again."""
    run = RunDir(Path(run_dir).expanduser().resolve())
    sweep = run.load_sweep()
    found = preflight.check(sweep)
    if progress:
        show_findings(found)
    return _execute(sweep, run, progress)


def _execute(sweep: Sweep, run: RunDir, progress: bool) -> SweepResult:
    """Run the stages in order; a Ctrl-C ends the run with `Interrupted`, starting nothing
    further (the trials' table is written first when training was stopped)."""
    try:
        return _stages(sweep, run, progress)
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(run.root) from None


def _stages(sweep: Sweep, run: RunDir, progress: bool) -> SweepResult:
    with contextlib.ExitStack() as stack:
        with stage("starting Ray", progress):
            stack.enter_context(ray_session())
        model_path = base_model_path(sweep, run.model)
        with stage("preparing data", progress):
            manifest = prepare(sweep, run, model_path)
        sizes = task_sizes(sweep, manifest)
        callbacks = [TrialProgress(sweep.trial_count(), sweep.metric)] if progress else []
        callbacks += [EarlyMerges(sweep, run, model_path, sizes)] if sweep.merge else []
        grid = tuner(sweep, model_path, run, sizes, callbacks).fit()
        table = trials_table(grid, sweep, sizes)
        write_results(table, sweep, run)
        ended = table["status"].isin(["done", "error"]).sum()
        if ended < sweep.trial_count():  # Tune stops its trials on Ctrl-C and returns
            raise Interrupted(run.root)
        write_scaling(table, sweep, run)
        merges = merge_stage(sweep, run, table, model_path, progress) if sweep.merge else None
        evals = eval_stage(sweep, run, table, merges, model_path, progress)
    write_report(sweep, run, table, merges, evals)
    return SweepResult(run.root, sweep, table, merges, evals)
