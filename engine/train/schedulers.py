"""Tune's trial scheduler for the sweep's `scheduler` section, and the record of its stops.

The scheduler sees every report of every trial (at each `train.eval_every`) with the sweep's
`metric`; the time it counts is the report's `step` or `examples_seen`. A trial it stops is
not a failure: `StopRecorder` writes the stop into the trial's folder (`stopped.json`), so the
trial's newest checkpoint is its result and a resumed sweep never trains it again.
"""

from __future__ import annotations

from pathlib import Path

from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule, TrialScheduler

from engine.core import storage
from engine.train import pbt, records
from sweeps import Sweep
from sweeps.schedulers import Asha, Median, first_report

NO_LIMIT = 10**12  # ASHA's max_t when none is given: trials end at their own last step


def build(sweep: Sweep) -> TrialScheduler | None:
    """The Tune scheduler of `sweep.scheduler` (None for `fifo`: Tune's default)."""
    config = sweep.scheduler
    builder = BUILDERS.get(config.type)
    return builder(config, sweep) if builder is not None else None


def _asha(config: Asha, sweep: Sweep) -> AsyncHyperBandScheduler:
    return AsyncHyperBandScheduler(
        time_attr=config.time,
        metric=sweep.metric,
        mode=sweep.direction(),
        max_t=config.max_t or NO_LIMIT,
        grace_period=config.grace_period or first_report(sweep, config.time),
        reduction_factor=config.reduction_factor,
        brackets=config.brackets,
    )


def _median(config: Median, sweep: Sweep) -> MedianStoppingRule:
    return MedianStoppingRule(
        time_attr=config.time,
        metric=sweep.metric,
        mode=sweep.direction(),
        grace_period=config.grace_period or first_report(sweep, config.time),
        min_samples_required=config.min_samples_required,
    )


def _pb2(config, sweep: Sweep) -> TrialScheduler:
    from engine.train import pb2  # Tune's PB2 needs scikit-learn: imported only when chosen

    return pb2.build(config, sweep)


BUILDERS = {"asha": _asha, "median": _median, "pbt": pbt.build, "pb2": _pb2}


class StopRecorder(tune.Callback):
    """Writes `stopped.json` into the folder of each trial Tune completes before its last
    step: only the scheduler ends a trial so (the end of a sweep or a Ctrl-C stops trials
    without completing them, and they resume)."""

    def __init__(self, tune_dir: Path, scheduler: str) -> None:
        # a location, not a path: Tune pickles its callbacks (`storage.local`)
        self.tune_dir, self.scheduler = storage.shown(tune_dir), scheduler

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        step, total, name = last.get("step"), last.get("total_steps"), last.get("name")
        if step is None or total is None or name is None or step >= total:
            return
        folder = Path(storage.local(self.tune_dir)) / records.folder_name(trial.trial_id, name)
        kept = {k: v for k, v in last.items() if isinstance(v, (int, float, str))}
        records.record_stop(folder, step, self.scheduler, kept)
