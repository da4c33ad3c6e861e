"""The train stage: the search space as one Ray Tune experiment of function trials."""

from __future__ import annotations

import functools
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from ray import tune
from ray.actor import ActorHandle

from engine.core import storage
from engine.core.errors import RunError
from engine.core.rundir import RunDir
from engine.train import pbt, records, schedulers, searchers, state
from engine.train.axes import Sizes, cells, identify, in_start_order
from engine.train.loop import TrialSpec, train
from engine.train.stops import EndsItsGroup, GroupStops
from sweeps import Sweep


class TuneSession:
    """The `Session` of a trial inside a Tune function trainable.

    Checkpoints are raysoup's own (`engine/train/records.py`): each is published into the
    trial's folder, complete, before its metrics are reported to Tune, so a trial is never
    ahead of what its folder holds. A trial resumes from the newest complete checkpoint of its
    name, whichever attempt or experiment wrote it.
    """

    def __init__(self, trial_dir: Path, keep: int | None, resume_from: Path | None) -> None:
        self.trial_dir, self.keep, self.resume_from = trial_dir, keep, resume_from

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        if checkpoint is not None:
            records.publish(checkpoint, self.trial_dir, metrics["step"])
            records.prune(self.trial_dir, self.keep)
        tune.report(metrics)

    def restore_dir(self) -> Path | None:
        return self.resume_from


def run_trial(
    config: dict,
    sweep_json: str,
    model_path: str,
    run_root: str,
    sizes: Sizes,
    stops: ActorHandle | None = None,
) -> None:
    """A Tune function trainable: one trial of the sweep, its cell in `config["trial"]`.

    `sizes` turns the data-size axis value (a count or a fraction) into the task's exact count.
    A trial whose folders already hold its last checkpoint, or say that the scheduler stopped
    it (it ended before Tune's state said so), is not trained again: it reports the metrics of
    its newest checkpoint once, which a searcher and a scheduler expect of every trial.
    `stops`: where the scheduler's stops of worker-group trials are told (`engine/train/stops.py`).
    """
    sweep, run = Sweep.model_validate_json(sweep_json), RunDir.at(run_root)
    model_path = storage.local(model_path)
    trial = identify(sweep, config["trial"], sizes)
    here = run.tune / records.folder_name(tune.get_context().get_trial_id(), trial.name)
    storage.pull_missing(run.tune)  # on object storage: earlier attempts' folders, any node's
    folders = records.trial_folders(run.tune, trial.name)
    pause = records.back_to_pause(folders)  # a paused worker group may train past its pause
    done = records.complete_checkpoints(folders)
    latest = done[-1] if done else None
    if records.is_finished(folders):
        if latest is not None:
            tune.report(records.checkpoint_info(latest))
        return
    clone = config.get(pbt.CLONE)
    if clone and not records.cloned(folders, clone):  # PBT made it exploit a top trial
        latest = records.clone_source(run.tune, clone)
        records.discard_checkpoints(folders)
        clone = {**clone, "step": records.checkpoint_info(latest).get("step") if latest else 0}
    else:
        clone = None
    resumed_from = records.checkpoint_info(latest).get("step") if latest else None
    records.record_attempt(here, trial.name, resumed_from, config["trial"], clone, pause)
    spec = TrialSpec(
        sweep=sweep.for_trial(trial.values),
        model_path=model_path,
        data_dir=run.data / trial.task,
        task=trial.task,
        seed=trial.seed,
        data_size=trial.data_size,
        name=trial.name,
    )
    keep = checkpoints_to_keep(sweep)
    if sweep.uses_worker_group():
        from engine.train.workers import run_workers

        run_workers(spec, here, keep, latest, run.worker_groups, stops)  # each rank fetches
    else:
        with storage.fetched(spec.data_dir, model_path, latest):  # on object storage
            train(spec, TuneSession(here, keep, latest))


run_trial.__mixins__ = (EndsItsGroup,)


class Mirror(tune.Callback):
    """On object storage: uploads what the driver writes during training (Tune's experiment
    state, trials' results) every 30 seconds and when a trial ends, so that a driver that dies
    leaves a run directory another machine can resume."""

    def __init__(self, run: RunDir, seconds: float = 30.0) -> None:
        self.run, self.due = run, storage.Every(seconds)

    def on_step(self, iteration, trials, **info) -> None:
        if self.due():
            self.run.push()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.run.push()

    on_trial_error = on_trial_complete


def param_space(sweep: Sweep) -> dict | None:
    """Tune's param space: one grid axis, `trial`, whose values are the sweep's cells (each
    drawn configuration on every task, data size and seed; `engine.train.axes.cells`) in the
    order they start, so that each configuration is trained unchanged on every task, data size
    and seed. None with a learning searcher: it gives each trial its cell
    (`engine/train/searchers.py`)."""
    if sweep.search.learns():
        return None
    return {"trial": tune.grid_search(in_start_order(sweep, cells(sweep)))}


def trainable(sweep: Sweep, model_path: str, run: RunDir, sizes: Sizes):
    fn = tune.with_parameters(
        run_trial,
        sweep_json=sweep.model_dump_json(),
        # Locations: a trial's node keeps its copy of a run directory on object storage
        # wherever its own cache is.
        model_path=storage.shown(model_path),
        run_root=run.location,
        sizes=sizes,
        stops=GroupStops.remote() if not reuses_processes(sweep) else None,
    )
    res = sweep.resources
    if sweep.uses_worker_group():  # the worker group reserves the resources itself
        from engine.train.workers import DRIVER_CPUS

        return tune.with_resources(fn, {"cpu": DRIVER_CPUS, "gpu": 0})
    return tune.with_resources(fn, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})


def start_mode(run: RunDir, rebuild: bool = False) -> str:
    """How the train stage starts: `restore` the experiment Tune saved in `tune/`, start a
    `new` one, or `rebuild` it from the trials' folders (asked for, or Tune's state is damaged
    before any trial started, so nothing is lost). Raises `RunError` when the state is damaged
    and trials started: restoring would train them all again under new ids. On object storage
    a damaged state is rebuilt without asking: Tune's files are the driver's uploads, one by
    one, which a killed driver can leave cut between two of them, while each trial's folder is
    uploaded whole (`engine/core/storage.py`)."""
    if rebuild:
        return "rebuild"
    problem = state.damage(run.tune)
    if problem is None:
        return "restore" if tune.Tuner.can_restore(str(run.tune)) else "new"
    started = state.started_trials(run.tune)
    if not started or state.recorded_no_trial(run.tune) or run.uri:
        return "rebuild"  # nothing Tune saved is lost, or what it saved was cut
    raise RunError(
        f"Tune's saved state in {run.tune} is damaged: {problem}. Nothing was started. "
        f"`raysoup resume {run.root} --rebuild-state` rebuilds the experiment from the "
        f"{started} trial folder(s): finished trials are reused as they are, the others "
        f"continue from their newest complete checkpoint, and the damaged files are kept in "
        f"{run.tune}/{state.ASIDE}<time>/"
    )


def tuner(
    sweep: Sweep, model_path: str, run: RunDir, sizes: Sizes, callbacks: list, mode: str = "new"
) -> tune.Tuner | None:
    """The Tune experiment in `<run>/tune` as `start_mode` said: restored, new, or rebuilt
    from the trials' folders (only the trials that have not finished; None when none is left).

    `sizes` maps each task and data-size value to the exact example count.
    """
    fn = trainable(sweep, model_path, run, sizes)
    if mode == "restore":
        try:
            return tune.Tuner.restore(
                str(run.tune),
                trainable=fn,
                resume_unfinished=True,
                resume_errored=True,
                param_space=param_space(sweep),
            )
        except Exception as err:
            raise RunError(
                f"Tune could not restore the experiment in {run.tune} ({type(err).__name__}: "
                f"{err}); `raysoup resume {run.root} --rebuild-state` rebuilds it from the "
                "trial folders"
            ) from err
    if mode != "rebuild":
        return _new_tuner(fn, sweep, run, sizes, callbacks)
    if state.saved(run.tune):
        state.set_aside(run.tune)
    if sweep.search.learns():
        started = searched_trials(sweep, run, sizes)
        left = sweep.trial_count() - sum(trial.finished for trial in started)
        if left <= 0:
            return None
        searcher = searchers.rebuilt(sweep, started)
        return _new_tuner(fn, sweep, run, sizes, callbacks, searcher=searcher, samples=left)
    todo = unfinished(sweep, run, sizes)
    return _new_tuner(fn, sweep, run, sizes, callbacks, todo) if todo else None


def unfinished(sweep: Sweep, run: RunDir, sizes: Sizes) -> list[dict]:
    """The cells of the trials that are neither done nor stopped by the scheduler, in the
    order they start."""
    return [
        cell
        for cell in in_start_order(sweep, cells(sweep))
        if not records.is_finished(
            records.trial_folders(run.tune, identify(sweep, cell, sizes).name)
        )
    ]


def searched_trials(sweep: Sweep, run: RunDir, sizes: Sizes) -> list[searchers.Started]:
    """Every trial a searcher's sweep started, as its folder records it, in the order they
    started."""
    found = []
    for cell in records.recorded_cells(run.tune):
        name = identify(sweep, cell, sizes).name
        folders = records.trial_folders(run.tune, name)
        finished, done = records.is_finished(folders), records.complete_checkpoints(folders)
        score = records.checkpoint_info(done[-1]).get(sweep.metric) if finished and done else None
        found.append(searchers.Started(cell, name, finished, score))
    return found


def _new_tuner(
    fn,
    sweep: Sweep,
    run: RunDir,
    sizes: Sizes,
    callbacks: list,
    todo: list[dict] | None = None,
    searcher: searchers.Replicates | None = None,
    samples: int | None = None,
) -> tune.Tuner:
    """A new experiment: of the cells `todo` (default: the sweep's), or with a learning
    searcher of `samples` trials (default: the sweep's count) from `searcher` (default: a new
    one)."""
    if sweep.scheduler.stops_trials():
        # first, so the other callbacks read the stopped trial's folder as stopped
        callbacks = [schedulers.StopRecorder(run.tune, sweep.scheduler.type), *callbacks]
    if sweep.uses_worker_group() and sweep.scheduler.pauses_trials():
        callbacks = [schedulers.PauseRecorder(run.tune), *callbacks]
    scheduler = schedulers.build(sweep)
    if scheduler is not None:  # Tune saves no scheduler: this callback does, with its state
        callbacks = [*callbacks, schedulers.KeepState(scheduler)]
    run_config = tune.RunConfig(
        name=run.tune.name,
        storage_path=str(run.root),
        callbacks=callbacks,
        verbose=0,
        # Trials keep their own checkpoints (`TuneSession`); Tune keeps none.
        failure_config=tune.FailureConfig(max_failures=sweep.resources.max_failures),
    )
    learns = sweep.search.learns()
    tune_config = tune.TuneConfig(
        # Drawn samples are in the cells; a learning searcher makes every trial's cell. Tune
        # knows the metric only for the scheduler and searcher; raysoup ranks trials itself.
        num_samples=(samples or sweep.trial_count()) if learns else 1,
        search_alg=(searcher or searchers.build(sweep)) if learns else None,
        scheduler=scheduler,
        reuse_actors=reuses_processes(sweep),
        max_concurrent_trials=max_concurrent(sweep),
        trial_dirname_creator=functools.partial(trial_folder, sweep=sweep, sizes=sizes),
    )
    space = param_space(sweep) if todo is None else {"trial": tune.grid_search(todo)}
    return tune.Tuner(fn, param_space=space, tune_config=tune_config, run_config=run_config)


def reuses_processes(sweep: Sweep) -> bool:
    """Whether a trial's process runs the next trial too. Reusing saves each trial the start
    of a Ray worker and the import of torch and transformers; every trial seeds everything it
    uses, so results do not change. Not when a scheduler stops or pauses worker-group trials:
    Tune keeps a stopped or paused trial's process for the next trial without telling it
    anything until then, so its group would train on; a process Tune ends instead ends its
    group first (`engine/train/stops.py`)."""
    scheduler = sweep.scheduler
    return not (
        sweep.uses_worker_group() and (scheduler.stops_trials() or scheduler.pauses_trials())
    )


def max_concurrent(sweep: Sweep) -> int | None:
    """`resources.max_concurrent` (and a learning searcher's `max_concurrent`: the lower);
    for worker-group trials at most as many as the cluster holds groups, or trials' own
    processes would take the CPUs their groups wait for."""
    caps = [sweep.resources.max_concurrent, getattr(sweep.search, "max_concurrent", None)]
    cap = min((c for c in caps if c is not None), default=None)
    if not sweep.uses_worker_group():
        return cap
    from engine.train.workers import group_capacity

    fits = group_capacity(sweep)
    return fits if cap is None else min(cap, fits)


def trial_folder(trial, sweep: Sweep, sizes: Sizes) -> str:
    """A trial's folder under `tune/`: Tune's id, then the trial's name
    (`bdf2d_00011-add-n1000-s0`)."""
    return records.folder_name(trial.trial_id, identify(sweep, trial.config["trial"], sizes).name)


def checkpoints_to_keep(sweep: Sweep) -> int | None:
    """`checkpoint.keep`, raised so that every checkpoint a checkpoint_average plan reads stays."""
    keep = sweep.checkpoint.keep
    for plan in sweep.merge:
        if plan.type != "checkpoint_average" or keep is None:
            continue
        keep = max(keep, plan.k) if plan.select == "last" else None
    return keep


@dataclass(frozen=True)
class Outcome:
    """How `fit` ended: stopped by Ctrl-C, or with an error Tune raised after the trials ran."""

    interrupted: bool
    error: str | None = None


def fit(experiment: tune.Tuner | None) -> Outcome:
    """Run the experiment. Its trials' results are in their folders, so an error Tune raises
    while reading its own files back (an empty `error.pkl` on a full disk) is returned, not
    raised; the caller decides from the trials' folders whether training ended."""
    if experiment is None:  # a rebuilt experiment with every trial finished
        return Outcome(interrupted=False)
    if threading.current_thread() is not threading.main_thread():
        return _fit(experiment, interrupted=lambda: False)
    original = signal.getsignal(signal.SIGINT)

    def second_ctrl_c(sig, frame):
        raise KeyboardInterrupt

    # Tune replaces this handler while it runs and puts it back when it catches a Ctrl-C, so
    # finding it here afterwards means the sweep was interrupted; a second Ctrl-C raises.
    signal.signal(signal.SIGINT, second_ctrl_c)
    try:
        return _fit(experiment, lambda: signal.getsignal(signal.SIGINT) is second_ctrl_c)
    finally:
        signal.signal(signal.SIGINT, original)


def _fit(experiment: tune.Tuner, interrupted) -> Outcome:
    try:
        experiment.fit()
    except Exception as err:  # the trials' folders say what happened
        return Outcome(interrupted(), f"{type(err).__name__}: {err}".strip())
    return Outcome(interrupted())
