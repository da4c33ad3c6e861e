"""Running a sweep: prepare, train, merge, evaluate, report, in that order. Each stage reads and
writes the run directory, so an interrupted sweep resumes where it stopped."""

from __future__ import annotations

import contextlib
import errno
import socket
from pathlib import Path

import pandas as pd

from engine import preflight
from engine.core.errors import RunError
from engine.core.models import base_model_path
from engine.core.progress import show_findings, stage, warn
from engine.core.rundir import Held, RunDir
from engine.core.session import ray_session, stop_leftovers
from engine.core.shared import check_shared
from engine.evaluate.stage import eval_stage
from engine.merge.stage import EarlyMerges, merge_stage
from engine.prepare.sizes import task_sizes
from engine.prepare.stage import prepare
from engine.report.files import write_report
from engine.report.result import SweepResult, load_result
from engine.report.scaling import write_scaling
from engine.tracking.results import log_merges, log_results
from engine.tracking.wandb_runs import Tracker, WandbTrials, guarded
from engine.train.experiment import Mirror, fit, start_mode, tuner
from engine.train.progress import TrialProgress
from engine.train.table import trials_table, write_results
from sweeps import Sweep
from sweeps.trials import RESULT_STATUSES

__all__ = ["Interrupted", "SweepResult", "load_result", "resume", "run"]


class Interrupted(KeyboardInterrupt):
    """The sweep was stopped (Ctrl-C) before its stages ended; `raysoup resume` finishes it."""

    def __init__(self, run_dir: Path | str) -> None:
        super().__init__(f"interrupted; finish the sweep with `raysoup resume {run_dir}`")
        self.run_dir = run_dir


def run(sweep: Sweep, storage: str | None = None, progress: bool = True) -> SweepResult:
    """Validate, then run every stage of `sweep` in `<storage>/<sweep.name>`.

    Re-running the same sweep into the same folder continues it; a different sweep is refused,
    and so is a run directory another driver holds (`RunDir.lock`).
    """
    run_dir = RunDir.for_sweep(sweep, storage)
    sweep = sweep.model_copy(update={"storage": run_dir.location.rsplit("/", 1)[0]})
    _check(sweep, progress)
    with run_dir.lock() as held:
        run_dir.pull()  # on object storage: what an earlier driver wrote, from any machine
        run_dir.claim(sweep)
        run_dir.push()  # on object storage: sweep.yaml, and the inputs a submitted job staged
        return _execute(sweep, run_dir, held, progress)


def resume(run_dir: str | Path, progress: bool = True, rebuild_state: bool = False) -> SweepResult:
    """Finish an interrupted sweep; trials that finished are not run again.

    `rebuild_state` sets Tune's saved state aside and rebuilds the experiment from the trials'
    folders (what to do when it is damaged: the error says so).
    """
    run = RunDir.at(run_dir)
    if run.uri is None:  # a local folder that is not a run directory is refused before anything
        run.load_sweep()
    with run.lock() as held:
        run.pull()
        sweep = run.load_sweep()
        _check(sweep, progress)
        return _execute(sweep, run, held, progress, rebuild_state)


def _check(sweep: Sweep, progress: bool) -> None:
    found = preflight.check(sweep)
    if progress:
        show_findings(found)


def _execute(
    sweep: Sweep, run: RunDir, held: Held, progress: bool, rebuild: bool = False
) -> SweepResult:
    """Run the stages in order; a Ctrl-C ends the run with `Interrupted`, starting nothing
    further (the trials' table is written first when training was stopped). A full disk ends
    it with `RunError`: what is written stays, and a resume continues once there is space."""
    _take_over(run, held.previous, progress)
    mode = start_mode(run, rebuild)  # before Ray starts: damaged state stops the run here
    try:
        result = _stages(sweep, run, held, progress, mode)
    except Interrupted:
        _push_what_is_left(run)
        raise
    except KeyboardInterrupt:
        _push_what_is_left(run)
        raise Interrupted(run.location) from None
    except OSError as err:
        _push_what_is_left(run)
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise RunError(
            f"no space left on the device of {err.filename or run.root}; what was written is "
            f"kept: free some space, then `raysoup resume {run.location}`"
        ) from err
    except Exception:
        _push_what_is_left(run)
        raise
    run.push()
    return result


def _push_what_is_left(run: RunDir) -> None:
    """On object storage, after a stage stopped: upload what the driver wrote until then (a
    failure to do so is said, not raised over the error that stopped the run)."""
    try:
        run.push()
    except Exception as err:  # the stage's own error is the one to show
        warn(f"could not upload the driver's files to {run.uri}: {type(err).__name__}: {err}")


def _take_over(run: RunDir, previous: dict | None, progress: bool) -> None:
    """After a driver that died: say so, and stop what its local Ray cluster left running."""
    if not previous:
        return
    here = previous.get("host") == socket.gethostname() and previous.get("ray_session")
    stopped = stop_leftovers(previous["ray_session"]) if here else 0
    if progress:
        left = f"; stopped {stopped} Ray process(es) its cluster left" if stopped else ""
        warn(
            f"took over {run.lock_file.name} from a raysoup that is no longer running (pid "
            f"{previous.get('pid')} on {previous.get('host')}){left}"
        )


def _stages(sweep: Sweep, run: RunDir, held: Held, progress: bool, mode: str) -> SweepResult:
    with contextlib.ExitStack() as stack:
        with stage("starting Ray", progress):
            started = stack.enter_context(ray_session())
        if started:
            held.note(ray_session=started)
        if run.uri is None:  # on object storage, nothing depends on a shared file system
            check_shared(run.root)
        tracker = Tracker(sweep, run) if sweep.tracking.wandb_on() else None
        if tracker:  # a stage that stops the sweep leaves no W&B run open
            stack.callback(tracker.end_all, "interrupted")
        model_path = base_model_path(sweep, run.model)
        with stage("preparing data", progress):
            manifest = prepare(sweep, run, model_path)
        run.push()
        sizes = task_sizes(sweep, manifest)
        table = _train(sweep, run, model_path, sizes, progress, mode, tracker)
        write_scaling(table, sweep, run)
        run.push()
        merges = merge_stage(sweep, run, table, model_path, progress) if sweep.merge else None
        if tracker:
            guarded(log_merges)(tracker, merges)
        run.push()
        evals = eval_stage(sweep, run, table, merges, model_path, progress)
    write_report(sweep, run, table, merges, evals)
    if tracker:
        guarded(log_results)(tracker, run, table, merges, evals)
    return SweepResult(run.root, sweep, table, merges, evals)


def _train(
    sweep: Sweep,
    run: RunDir,
    model_path: str,
    sizes,
    progress: bool,
    mode: str,
    tracker: Tracker | None = None,
) -> pd.DataFrame:
    """The train stage: the Tune experiment, then `trials.parquet` from the trials' folders.

    Raises `Interrupted` after a Ctrl-C, and `RunError` when Tune stopped with trials left
    unfinished for another reason; a trial that failed is a row, not an error."""
    callbacks = [TrialProgress(sweep.trial_count(), sweep.metric)] if progress else []
    callbacks += [EarlyMerges(sweep, run, model_path, sizes)] if sweep.merge else []
    callbacks += [Mirror(run)] if run.uri else []
    callbacks += [WandbTrials(tracker, sizes)] if tracker else []
    if mode == "rebuild" and progress:
        warn(f"rebuilding the Tune experiment in {run.location}/tune from the trials' folders")
    outcome = fit(tuner(sweep, model_path, run, sizes, callbacks, mode))
    run.pull("tune")  # what trials on other nodes wrote
    table = trials_table(run, sweep, sizes)
    write_results(table, sweep, run)
    if outcome.interrupted:
        raise Interrupted(run.location)
    unfinished = sweep.trial_count() - int(table["status"].isin([*RESULT_STATUSES, "error"]).sum())
    if outcome.error and unfinished:
        raise RunError(
            f"training stopped with {unfinished} trial(s) unfinished: {outcome.error}; "
            f"`raysoup resume {run.location}` continues them from their checkpoints"
        )
    if outcome.error and progress:
        warn(
            f"Tune could not read back its own results ({outcome.error}); the trials' folders "
            "hold them, and trials.parquet was written from those"
        )
    return table
