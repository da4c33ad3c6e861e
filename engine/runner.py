"""Running a sweep: prepare, train, collect. Each stage reads and writes the run directory."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine import preflight
from engine.rundir import RunDir
from sweeps import Sweep
from sweeps.space import grid_size

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class SweepResult:
    """What a sweep produced: its run directory, one row per trial, one per merge job, and the
    evaluations of every candidate (None for stages the sweep does not have)."""

    run_dir: Path
    sweep: Sweep
    trials: "pd.DataFrame"
    merges: "pd.DataFrame | None" = None
    evals: "pd.DataFrame | None" = None

    def leaderboard(self) -> "pd.DataFrame":
        """Trials best first by the sweep's metric."""
        from engine.results import ranked

        return ranked(self.trials, self.sweep)

    def best(self) -> "pd.Series":
        return self.leaderboard().iloc[0]

    def candidates(self) -> "pd.DataFrame | None":
        """Every evaluated candidate (base, trials, merges) ranked by its selection score, with
        each merge's gain over its ingredients on test; None without evaluations."""
        from engine.report import candidate_board

        return candidate_board(self.sweep, self.merges, self.evals)

    def scaling(self) -> dict | None:
        """The scaling-law analysis (`scaling.json`): the fitted law per group, its held-out
        error, intervals and predictions; None when the sweep has no data-scale axis."""
        from engine.scaling import load_scaling

        return load_scaling(self.run_dir)


def run(sweep: Sweep, storage: str | None = None, progress: bool = True) -> SweepResult:
    """Validate, then run every stage of `sweep` in `<storage>/<sweep.name>`.

    Re-running the same sweep into the same folder continues it; a different sweep is refused.
    """
    preflight.check(sweep)
    run_dir = RunDir.for_sweep(sweep, storage)
    sweep = sweep.model_copy(update={"storage": str(run_dir.root.parent)})
    run_dir.claim(sweep)
    return _execute(sweep, run_dir, progress)


def resume(run_dir: str | Path, progress: bool = True) -> SweepResult:
    """Finish an interrupted sweep; trials that finished are not run again."""
    run = RunDir(Path(run_dir).expanduser().resolve())
    sweep = run.load_sweep()
    preflight.check(sweep)
    return _execute(sweep, run, progress)


def load_result(run_dir: str | Path) -> SweepResult:
    """The result of a finished sweep, read from its run directory."""
    run = RunDir(Path(run_dir).expanduser().resolve())
    sweep = run.load_sweep()
    if not run.trials.is_file():
        from sweeps import SweepError

        raise SweepError(f"{run.root}: no trials.parquet yet; finish the sweep with "
                         f"`raysoup resume {run.root}`")
    import pandas as pd

    def table(path: Path):
        return pd.read_parquet(path) if path.is_file() else None

    return SweepResult(run.root, sweep, table(run.trials), table(run.merges_table),
                       table(run.evals))


def count_trials(sweep: Sweep) -> int:
    grids = math.prod(grid_size(s) for s in sweep.search_space().values())
    return (grids * sweep.num_samples * len(sweep.data_scale or [None]) * len(sweep.seeds)
            * len(sweep.task_names()))


def task_sizes(sweep: Sweep, manifest: dict) -> dict[str, dict[str, int]]:
    """Each task's exact example count for each data-size value (a count or a fraction)."""
    sizes = {}
    for task in sweep.task_names():
        entry = manifest["tasks"][task]
        rows, selected = entry["train"]["rows"], (entry["selection"] or [{}])[-1].get("rows_out")
        sizes[task] = {str(v): preflight.resolve_size(v, rows, selected)
                       for v in sweep.data_scale or []}
    return sizes


def _execute(sweep: Sweep, run: RunDir, progress: bool) -> SweepResult:
    from engine.data import prepare
    from engine.eval_stage import eval_stage
    from engine.report import write_report
    from engine.merge_stage import EarlyMerges, merge_stage
    from engine.models import base_model_path
    from engine.progress import TrialProgress, stage
    from engine.results import trials_table, write_results
    from engine.scaling import write_scaling
    from engine.trials import tuner

    with contextlib.ExitStack() as stack:
        with stage("starting Ray", progress):
            stack.enter_context(ray_session())
        model_path = base_model_path(sweep, run.model)
        with stage("preparing data", progress):
            manifest = prepare(sweep, run, model_path)
        sizes = task_sizes(sweep, manifest)
        callbacks = [TrialProgress(count_trials(sweep), sweep.metric)] if progress else []
        callbacks += [EarlyMerges(sweep, run, model_path)] if sweep.merge else []
        grid = tuner(sweep, model_path, run, sizes, callbacks).fit()
        table = trials_table(grid, sweep)
        write_results(table, sweep, run)
        write_scaling(table, sweep, run)
        merges = merge_stage(sweep, run, table, model_path, progress) if sweep.merge else None
        evals = eval_stage(sweep, run, table, merges, model_path, progress)
    write_report(sweep, run, table, merges, evals)
    return SweepResult(run.root, sweep, table, merges, evals)


# raysoup shows its own progress; Ray's per-stage banners and snapshot advice would bury it.
QUIET_RAY = {"RAY_AIR_NEW_OUTPUT": "0",
             "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


def quiet_ray() -> None:
    for name, value in QUIET_RAY.items():
        os.environ.setdefault(name, value)
    for logger in ("ray.data", "ray.tune", "ray.train"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


@contextlib.contextmanager
def ray_session():
    """Use the Ray the caller started, the cluster in RAY_ADDRESS, or a new local one."""
    import ray

    quiet_ray()
    if ray.is_initialized():
        yield
        return
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()
