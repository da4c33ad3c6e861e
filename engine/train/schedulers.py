"""Tune's trial scheduler for the sweep's `scheduler` section, and the record of its stops.

The scheduler sees every report of every trial (at each `train.eval_every`) with the sweep's
`metric`; the time it counts is the report's `step` or `examples_seen`. A trial it stops is
not a failure: `StopRecorder` writes the stop into the trial's folder (`stopped.json`), so the
trial's newest checkpoint is its result and a resumed sweep never trains it again. A
worker-group trial it pauses gets `paused.json` from `PauseRecorder`, so that it continues
from the step it was judged at.

Tune saves its searcher with the experiment but not its scheduler (Ray #30838): a restored
experiment would start with ASHA's rungs, the median rule's results and PBT's scores empty,
and judge the trials that go on against none of those that came before. `KeepState` saves the
scheduler into Tune's callback state, written with each experiment checkpoint (so it always
matches the trials Tune restores), and puts it back before the restored experiment's first
step.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import ray.cloudpickle as cloudpickle
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    HyperBandForBOHB,
    MedianStoppingRule,
    TrialScheduler,
)

from engine.core import storage
from engine.train import pbt, records
from sweeps import Sweep
from sweeps.schedulers import Asha, HyperBand, Median, first_report, hyperband_max_t

logger = logging.getLogger(__name__)
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


class BohbBands(HyperBandForBOHB):
    """Tune's HyperBand for BOHB, telling BOHB the results that end trials too. Tune's
    controller tells the searcher no result of a trial the scheduler stops with it, so the
    result at a budget of the trial whose report closes a bracket and loses, and of each trial
    that reaches `max_t`, would never reach BOHB: its models would miss the worse points."""

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and "budget" in result.get("hyperband_info", {}):
            tune_controller.search_alg.on_trial_result(trial.trial_id, result)
        return decision


def _hyperband(config: HyperBand, sweep: Sweep) -> HyperBandForBOHB:
    """Synchronous HyperBand for BOHB: a paused trial's process ends, and it continues from
    its own checkpoint when its bracket lets it (`run_trial`)."""
    return BohbBands(
        time_attr=config.time,
        metric=sweep.metric,
        mode=sweep.direction(),
        max_t=hyperband_max_t(sweep),
        reduction_factor=config.reduction_factor,
    )


def _pb2(config, sweep: Sweep) -> TrialScheduler:
    from engine.train import pb2  # Tune's PB2 needs scikit-learn: imported only when chosen

    return pb2.build(config, sweep)


BUILDERS = {
    "asha": _asha,
    "median": _median,
    "hyperband": _hyperband,
    "pbt": pbt.build,
    "pb2": _pb2,
}


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


class PauseRecorder(tune.Callback):
    """Writes `paused.json` (the step of the report it was paused at) into the folder of each
    worker-group trial the scheduler holds paused. A pause ends the trial's process, and its
    group learns of that between two steps: by then it may have saved another checkpoint,
    which the trial's next start deletes (`records.back_to_pause`)."""

    def __init__(self, tune_dir: Path) -> None:
        self.tune_dir = storage.shown(tune_dir)  # a location: Tune pickles its callbacks

    def on_step_end(self, iteration, trials, **info) -> None:
        for trial in trials:
            last = trial.last_result or {}
            if trial.status != Trial.PAUSED or "step" not in last or "name" not in last:
                continue
            folder = Path(storage.local(self.tune_dir)) / records.folder_name(
                trial.trial_id, last["name"]
            )
            if records.record_pause(folder, int(last["step"])):
                storage.upload(folder / records.PAUSED)  # on object storage: for any node


class KeepState(tune.Callback):
    """Keeps `scheduler`'s state across a restored experiment (see the module's docstring).

    Its attributes are pickled with each trial as its id; on restore they are put back with
    the restored trials in their place, and what named a trial Tune did not restore (one
    added after the last experiment checkpoint) is dropped. Tune pickles this callback and
    the scheduler together (`tuner.pkl`), so the restored callback holds the restored
    experiment's scheduler.
    """

    def __init__(self, scheduler: TrialScheduler) -> None:
        self.scheduler = scheduler
        self.saved: bytes | None = None

    def get_state(self) -> dict:
        kept = {k: v for k, v in vars(self.scheduler).items() if not callable(v)}
        out = io.BytesIO()
        _TrialsAsIds(out).dump(kept)
        return {"scheduler": out.getvalue()}

    def set_state(self, state: dict) -> None:
        self.saved = state["scheduler"]  # the trials are not restored yet: see on_step_begin

    def on_step_begin(self, iteration: int, trials: list[Trial], **info) -> None:
        if self.saved is None:
            return
        saved, self.saved = self.saved, None
        by_id = {trial.trial_id: trial for trial in trials}
        loader = _IdsAsTrials(io.BytesIO(saved), by_id)
        try:
            kept = loader.load()
        except Exception as err:  # an older raysoup's or Ray's scheduler: start it afresh
            logger.warning("the scheduler's saved state cannot be read (%s); it starts empty", err)
            return
        fresh = vars(self.scheduler)
        for name, value in kept.items():
            value = _without_gone(value)
            if isinstance(value, dict) and isinstance(fresh.get(name), dict):
                for key, entry in fresh[name].items():  # a restored trial it did not know
                    value.setdefault(key, entry)
            fresh[name] = value


class _Gone:
    """A trial the saved state names but Tune did not restore."""


def _without_gone(value, seen: set[int] | None = None):
    """`value` without what names a trial Tune did not restore: in a dict's keys, a set or a
    list (how Tune's schedulers hold trials), at any depth, and inside the objects of Tune's
    schedulers that hold trials themselves (HyperBand's brackets)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return value
    seen.add(id(value))
    if isinstance(value, dict):
        for key in [k for k in value if isinstance(k, _Gone)]:
            del value[key]
        parts = list(value.values())
    elif isinstance(value, set):
        value.difference_update([v for v in value if isinstance(v, _Gone)])
        parts = list(value)
    elif isinstance(value, list):
        value[:] = [v for v in value if not isinstance(v, _Gone)]
        parts = value
    elif isinstance(value, tuple):
        parts = list(value)
    elif type(value).__module__.startswith("ray.tune.schedulers"):
        parts = [vars(value)] if hasattr(value, "__dict__") else []
    else:
        parts = []
    for part in parts:
        _without_gone(part, seen)
    return value


class _TrialsAsIds(cloudpickle.Pickler):
    def persistent_id(self, obj):
        return ("trial", obj.trial_id) if isinstance(obj, Trial) else None


class _IdsAsTrials(pickle.Unpickler):
    def __init__(self, file, by_id: dict[str, Trial]) -> None:
        super().__init__(file)
        self.by_id = by_id

    def persistent_load(self, pid):
        return self.by_id.get(pid[1]) or _Gone()
