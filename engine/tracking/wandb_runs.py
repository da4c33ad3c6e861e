"""A sweep's Weights & Biases runs, all written by the driver: one per trial attempt (a Tune
callback, `WandbTrials`), one per merge and one for the sweep's results (`log_results`).

Runs land in `<run dir>/wandb/` (offline by default). `wandb/raysoup-runs.json` lists the runs
already logged, so a resumed sweep logs each finished trial and merge once; an attempt that a
killed driver left open stays as W&B wrote it (shown as crashed once synced) and the attempt
that continues the trial gets a run of its own. Nothing W&B would collect about the machine or
the command line is recorded (`settings`): the command line can hold a token.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import threading
from pathlib import Path

import pandas as pd
import wandb
from ray import cloudpickle, tune
from ray.exceptions import RayActorError

from engine.core import storage
from engine.core.progress import warn
from engine.core.rundir import RunDir, write_atomic
from engine.train import records
from engine.train.axes import Sizes, TrialIdentity, identify
from engine.train.pbt import CLONE
from sweeps import Sweep

LEDGER = "raysoup-runs.json"
# What Tune adds to every result: its bookkeeping, not the trial's measurements.
TUNE_KEYS = {
    "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore", "done",
    "training_iteration", "iterations_since_restore", "pid", "node_ip", "hostname", "date",
    "trial_id", "experiment_tag", "checkpoint_dir_name", "should_checkpoint",
}  # fmt: skip
FAILED = 1  # W&B shows a run that ended with a non-zero exit code as failed
# A trial's config: what it trained with; never `submit` (a job's environment) or `tracking`.
TRIAL_SECTIONS = ("model", "finetune", "data", "train", "checkpoint", "resources", "deepspeed")


def settings(sweep: Sweep) -> wandb.Settings:
    cfg = sweep.tracking.wandb
    return wandb.Settings(
        mode=cfg.mode,
        reinit="create_new",  # one process holds the runs of every trial at once
        init_timeout=cfg.timeout,
        finish_timeout=cfg.timeout,
        **({"base_url": cfg.base_url} if cfg.base_url else {}),
        console="off",  # the driver's output is the run directory's, and can hold anything
        x_disable_meta=True,  # argv, host, user, executable: the command line can hold a key
        x_disable_machine_info=True,
        x_disable_stats=True,  # the driver's own CPU and memory say nothing about the trials
        disable_git=True,
        disable_code=True,
        save_code=False,
        x_save_requirements=False,  # a pip listing per run: a fifth of a second each
        silent=True,
    )


class Tracker:
    """Opens and ends the sweep's W&B runs and keeps the ledger of those that ended."""

    def __init__(self, sweep: Sweep, run: RunDir) -> None:
        self.sweep, self.cfg, self.run, self.root = sweep, sweep.tracking.wandb, run, run.root
        # Read afresh at each use: a resumed sweep's trial callback is Tune's unpickled copy of
        # this tracker, and both write the one ledger.
        self.ledger_path = run.root / "wandb" / LEDGER
        self.open_runs: dict[str, wandb.Run] = {}
        self.failed = False
        # W&B's first run costs a second or more (its service process, and importing its launch
        # package): paid while the data is prepared, not when the first trial starts.
        self.ready = threading.Thread(target=_warm_up, daemon=True)
        self.ready.start()

    def __reduce__(self):
        # Tune pickles its callbacks into tuner.pkl: a restored copy starts with no open run.
        return (Tracker, (self.sweep, self.run))

    def ended(self, key: str) -> bool:
        """Whether `key` (a trial's or merge's name) has a run that ended well."""
        return _read(self.ledger_path).get(key, {}).get("state") in ("finished", "stopped")

    def start(self, key: str, name: str, job_type: str, config: dict) -> wandb.Run | None:
        """A new run for `key`; None once W&B has failed to start one (an unreachable server
        would otherwise cost every trial W&B's `init_timeout`)."""
        if self.failed:
            return None
        self.ready.join()
        self.ledger_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            run = wandb.init(
                project=self.cfg.project,
                entity=self.cfg.entity,
                group=self.cfg.group or self.sweep.name,
                tags=self.cfg.tags,
                name=name,
                job_type=job_type,
                config=config,
                dir=str(self.root),
                settings=settings(self.sweep),
            )
        except Exception as err:
            self.failed = True
            warn(
                f"W&B: no run could be started ({type(err).__name__}: {err}); the sweep goes "
                "on without W&B, and its run directory holds every result"
            )
            return None
        self.open_runs[key] = run
        self._note(key, run.id, "running")
        return run

    def end(self, key: str, state: str, summary: dict | None = None) -> None:
        """End `key`'s open run: `finished`, `stopped` and `paused` exit 0; any other state
        (`failed`, `crashed`, `interrupted`) exits 1, which W&B shows as failed."""
        run = self.open_runs.pop(key, None)
        if run is None:
            return
        run.summary.update({"raysoup/state": state, **(summary or {})})
        try:
            run.finish(exit_code=0 if state in ("finished", "stopped", "paused") else FAILED)
        except Exception as err:  # its data stays on disk for `wandb sync`
            warn(f"W&B run {run.id} of {key} did not finish cleanly: {err}")
        self._note(key, run.id, state)

    def log_model(self, run: wandb.Run, name: str, folder: Path | str, metadata: dict) -> None:
        """`folder` as the run's output artifact: a reference to it (nothing copied), or an
        upload with `log_checkpoints`."""
        artifact = wandb.Artifact(_artifact_name(name), type="model", metadata=metadata)
        location = storage.shown(folder)
        if self.cfg.log_checkpoints:
            with storage.fetched(location):
                artifact.add_dir(str(storage.local(location)))
        else:
            uri = location if "://" in location else Path(location).resolve().as_uri()
            artifact.add_reference(uri, checksum=False)  # a checksum would read every weight
        run.log_artifact(artifact)

    def end_all(self, state: str) -> None:
        for key in list(self.open_runs):
            self.end(key, state)

    def _note(self, key: str, run_id: str, state: str) -> None:
        ledger = _read(self.ledger_path) | {key: {"id": run_id, "state": state}}
        write_atomic(self.ledger_path, json.dumps(ledger, indent=1, sort_keys=True))


def guarded(method):
    """A tracking method whose failure is said and does not stop the sweep: the run directory
    holds every result, and `wandb sync` or a resume can log them again."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as err:
            warn(f"W&B: {method.__name__} failed ({type(err).__name__}: {err})")

    return wrapper


class WandbTrials(tune.Callback):
    """One W&B run per trial attempt: its configuration, its metrics at every report by
    optimizer step, and its end (finished, stopped by the scheduler, or failed)."""

    def __init__(self, tracker: Tracker, sizes: Sizes) -> None:
        self.tracker, self.sizes = tracker, sizes
        self.trials: dict[str, TrialIdentity] = {}  # Tune's trial id -> the open run's trial

    @guarded
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        found = identify(self.tracker.sweep, trial.config["trial"], self.sizes)
        if self.tracker.ended(found.name):  # finished before a resume: reported once more
            return
        # Tune paused it (population-based training's exploit, or to let others run): the
        # run of the attempt before ends, and one for what follows begins.
        self.tracker.end(found.name, "paused")
        config = trial_config(self.tracker.sweep, found)
        if CLONE in trial.config:  # whom it cloned, at which step
            config[CLONE] = trial.config[CLONE]
        if self.tracker.start(found.name, found.name, "train", config):
            self.trials[trial.trial_id] = found

    @guarded
    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        found = self.trials.get(trial.trial_id)
        run = found and self.tracker.open_runs.get(found.name)
        if run is not None and "step" in result:
            run.log(measurements(result), step=int(result["step"]))

    @guarded
    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        found = self.trials.pop(trial.trial_id, None)
        if found is None:
            return
        # The scheduler's stop is already in the trial's folder: `StopRecorder` runs first.
        folders = records.trial_folders(self.tracker.run.tune, found.name)
        state = "stopped" if records.read_stop(folders) else "finished"
        done = records.complete_checkpoints(folders)
        run = self.tracker.open_runs.get(found.name)
        if run is not None and done:
            self.tracker.log_model(run, found.name, done[-1], {"checkpoint": done[-1].name})
        self.tracker.end(found.name, state, measurements(trial.last_result))

    @guarded
    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        found = self.trials.pop(trial.trial_id, None)
        if found is not None:
            state, error = _ending(trial)
            self.tracker.end(found.name, state, {"raysoup/error": error})

    on_trial_recover = on_trial_error

    @guarded
    def on_experiment_end(self, trials, **info) -> None:
        self.tracker.end_all("interrupted")


def _warm_up() -> None:
    wandb.setup()
    importlib.import_module("wandb.sdk.launch")  # what `wandb.init` imports on its first run


def trial_config(sweep: Sweep, trial: TrialIdentity) -> dict:
    """What a trial's run shows as its config: its cell, then the settings it trained with."""
    resolved = sweep.for_trial(trial.values).model_dump(mode="json", include=set(TRIAL_SECTIONS))
    cell = {"trial": trial.name, "task": trial.task, "data_size": trial.data_size}
    cell |= {"seed": trial.seed, "point": trial.point, "sweep": sweep.name}
    return cell | {"searched": trial.values} | resolved


def measurements(result: dict) -> dict:
    """The trial's own numbers in a Tune result (NaN kept: W&B shows it, and so it should)."""
    return {
        key: value
        for key, value in result.items()
        if key not in TUNE_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _ending(trial) -> tuple[str, str]:
    """How a failed attempt ended: `crashed` when its process died (killed, out of memory, a
    lost node), `failed` when the trial raised; and the end of the error Tune recorded (in the
    trial's local folder: Tune copies it to its storage later)."""
    try:
        with open(trial.pickled_error_file, "rb") as handle:
            error = cloudpickle.load(handle)
        text = Path(trial.error_file).read_text()
    except Exception:  # not written (a full disk) or not readable: say what is known
        error, text = None, "error (Tune recorded none)"
    return "crashed" if isinstance(error, RayActorError) else "failed", text[-2000:]


def _artifact_name(name: str) -> str:
    """W&B allows letters, digits, dashes, underscores and dots in an artifact's name."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def table(frame: pd.DataFrame | None) -> wandb.Table | None:
    """A data frame as a W&B table, every cell JSON-safe (lists and dicts as JSON text)."""
    if frame is None or frame.empty:
        return None
    rows = [[_cell(v) for v in row] for row in frame.itertuples(index=False)]
    return wandb.Table(columns=[str(c) for c in frame.columns], data=rows)


def _cell(value):
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _cell(value.tolist())
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return finite(value)
    return str(value)
