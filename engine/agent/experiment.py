"""A W&B sweep file that runs a script of yours, as one Ray Tune experiment: each configuration
a trial that runs the script as W&B's agent would (`engine/agent/trial.py`).

- `method: grid`: W&B's grid points, the first run_cap of them; `random`: run_cap draws of W&B's
  random search, from a numpy Generator seeded with the seed option; `bayes`: Tune's
  `OptunaSearch` (TPE) over the parameters' spaces, run_cap trials.
- `metric.goal` is Tune's mode; `metric.target` ends the sweep once a trial's logged value
  reaches it (`TargetStopper`).
- hyperband `early_terminate` is ASHA over `training_iteration`, the count of the metric's
  logged values: W&B's first band as the grace period, eta as the reduction factor.

The experiment lives in `<storage>/<name>/tune/` and resumes: running the same file into the
same folder restores it (finished trials are not run again; failed ones run again).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from rich.console import Console

from engine.agent import plan, records, results
from engine.agent.plan import ScriptSweep
from engine.agent.results import AgentResult
from engine.agent.trial import METRIC, ScriptSpec, run_trial
from engine.core.rundir import RunDir, write_atomic
from engine.core.session import ray_session
from engine.train.schedulers import KeepState
from sweeps.errors import SweepError
from sweeps.wandb_params import Constant, Distribution, Nested
from sweeps.wandb_sweeps import Hyperband

NO_LIMIT = 10**12  # ASHA's max_t in the min_iter form: W&B's bands go on as long as a run
TARGET = "target.json"  # in the run directory, once a trial reached metric.target
CLAIM = "wandb-sweep.json"  # the sweep file and seed that the run directory holds
MODES = ("offline", "online")  # the scripts' runs must write a run file: never disabled


@dataclass(frozen=True)
class AgentOptions:
    """How `raysoup run` runs a W&B sweep file's script."""

    storage: str = "runs"
    seed: int = 0  # method random's draws
    wandb_mode: str = "offline"  # WANDB_MODE of the scripts: offline or online
    sweep_id: str | None = None  # WANDB_SWEEP_ID, for a sweep that W&B's server knows
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    grace_s: float = 5.0  # from a stopped script's SIGTERM to SIGKILL

    def __post_init__(self) -> None:
        if self.wandb_mode not in MODES:
            raise SweepError(f"--wandb-mode: {self.wandb_mode!r}; one of {', '.join(MODES)}")
        if self.cpus_per_trial < 0 or self.gpus_per_trial < 0:
            raise SweepError("--cpus-per-trial and --gpus-per-trial: at least 0")


def run(sweep: ScriptSweep, options: AgentOptions) -> AgentResult:
    """Run the sweep's trials into `<storage>/<name>/` (or go on with those a stopped run left
    there) on the Ray the caller started, the cluster in RAY_ADDRESS, or a new local one; then
    write `trials.parquet`. A sweep whose target was reached runs no more trials."""
    run_directory = run_dir(sweep, options)
    with run_directory.lock():
        claim(run_directory, sweep, options)
        if target_reached(run_directory) is None:
            with ray_session():
                tuner(sweep, options, run_directory).fit()
            settle(run_directory, options.grace_s + 5)
        return results.write(run_directory, sweep, target_reached(run_directory))


def settle(run: RunDir, seconds: float) -> None:
    """After the experiment: waits for the trials Tune stopped last to record their end; once
    the target was reached, a trial that recorded none was stopped by it."""
    missing = records.wait_for_outcomes(run.root, seconds)
    if target_reached(run) is not None:
        for folder in missing:
            records.write_outcome(folder, "stopped", records.Values(), None, None)


def run_dir(sweep: ScriptSweep, options: AgentOptions) -> RunDir:
    """`<storage>/<name>/`, a local (or shared) folder."""
    if "://" in options.storage:
        raise SweepError(
            f"--storage {options.storage}: a W&B sweep file's trials write into a folder "
            "(local, or shared by every node), not object storage"
        )
    return RunDir(Path(options.storage).expanduser().resolve() / sweep.name)


def claim(run: RunDir, sweep: ScriptSweep, options: AgentOptions) -> None:
    """Record the sweep in its run directory; refuse a folder that holds a different one."""
    data = json.loads(json.dumps(sweep.data, default=str))  # as the claim reads back
    held = {"file": str(sweep.path.resolve()), "sweep": data, "seed": options.seed}
    path = run.root / CLAIM
    if path.is_file():
        before = json.loads(path.read_text())
        if (before.get("sweep"), before.get("seed")) != (data, options.seed):
            raise SweepError(
                f"{run.root} holds a different W&B sweep (from {before.get('file')}, seed "
                f"{before.get('seed')}); rename the sweep (`name`) or pick another --storage"
            )
    run.root.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(held, indent=1, default=str))


def spec(sweep: ScriptSweep, options: AgentOptions, run: RunDir) -> ScriptSpec:
    parsed, metric = sweep.parsed, sweep.parsed.metric
    return ScriptSpec(
        run_root=str(run.root),
        cwd=str(sweep.cwd),
        command=tuple(parsed.command) if parsed.command is not None else None,
        program=parsed.program,
        paths=sweep.paths,
        metric=metric.name if metric else None,
        goal=metric.goal if metric else "minimize",
        wandb_mode=options.wandb_mode,
        sweep_label=options.sweep_id or sweep.name,
        sweep_id=options.sweep_id,
        project=parsed.project,
        entity=parsed.entity,
        grace_s=options.grace_s,
    )


def tuner(sweep: ScriptSweep, options: AgentOptions, run: RunDir) -> tune.Tuner:
    """The experiment in `<run>/tune`: restored when Tune saved one there, else new."""
    fn = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec(sweep, options, run)),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
    )
    if tune.Tuner.can_restore(str(run.tune)):
        return tune.Tuner.restore(
            str(run.tune), trainable=fn, resume_unfinished=True, restart_errored=True
        )
    configs = plan.configurations(sweep, options.seed)
    learns = configs is None
    stopper = scheduler(sweep.parsed.early_terminate)
    callbacks = [Outcomes(str(run.root))]
    if stopper is not None:  # its rungs survive a killed driver (Tune saves no scheduler)
        callbacks.append(KeepState(stopper))
    tune_config = tune.TuneConfig(
        metric=METRIC if sweep.mode else None,
        mode=sweep.mode,
        num_samples=sweep.parsed.run_cap if learns else 1,
        search_alg=searcher(options.seed) if learns else None,
        scheduler=stopper,
        trial_dirname_creator=trial_dirname,
    )
    target = sweep.parsed.metric.target if sweep.parsed.metric else None
    run_config = tune.RunConfig(
        name=run.tune.name,
        storage_path=str(run.root),
        stop=TargetStopper(target, sweep.mode, str(run.root)) if target is not None else None,
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=0),  # W&B's agent runs a run once
        verbose=0,
    )
    space = {"params": tune_space(sweep.parsed.parameters) if learns else tune.grid_search(configs)}
    return tune.Tuner(fn, param_space=space, tune_config=tune_config, run_config=run_config)


def trial_dirname(trial) -> str:
    """Tune's folder of a trial: its id (Tune's default holds the whole configuration)."""
    return trial.trial_id


def scheduler(hyperband: Hyperband | None) -> ASHAScheduler | None:
    """W&B's hyperband stopping as ASHA over the count of logged values: rungs at the first
    band times eta**k. With min_iter they go on without end, as W&B's bands do; with max_iter
    and s they end at W&B's largest band (max_iter / eta). A trial past the last rung runs to
    its end: W&B never stops a run at max_iter (`stop_last_trials=False`)."""
    if hyperband is None:
        return None
    first = hyperband.first_band()
    last = NO_LIMIT if hyperband.min_iter is not None else int(hyperband.max_iter / hyperband.eta)
    return ASHAScheduler(
        time_attr="training_iteration",
        grace_period=first,
        reduction_factor=hyperband.eta,
        max_t=last + 0.5,  # the last band is a rung even where the logarithms round below it
        stop_last_trials=False,
    )


def searcher(seed: int) -> Searcher:
    import optuna  # the `search` extra: only for method bayes
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))


def tune_space(parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters as Tune's search space, nested as they are (`plan.searchable` has
    refused the distributions that have none)."""
    return {
        name: tune_space(p.parameters) if isinstance(p, Nested) else _domain(p)
        for name, p in parameters.items()
    }


def _domain(parameter: Distribution) -> Any:
    if isinstance(parameter, Constant):
        return parameter.value
    ((kind, value),) = parameter.space().items()
    if kind == "choice":
        return tune.choice(value)
    if kind == "randint":
        return tune.randint(value[0], value[1] + 1)  # Tune's upper bound is excluded
    return {"uniform": tune.uniform, "loguniform": tune.loguniform}[kind](*value)


class TargetStopper(tune.Stopper):
    """Ends the sweep once a trial logs a value of the metric at its target (at or below it
    when minimizing, at or above when maximizing), and records which in `target.json`."""

    def __init__(self, target: float, mode: str, run_root: str) -> None:
        self.target, self.mode, self.run_root = target, mode, run_root
        self.reached: dict | None = None

    def __call__(self, trial_id: str, result: dict) -> bool:
        value = result.get(METRIC)
        if self.reached is None and isinstance(value, float) and math.isfinite(value):
            if (value <= self.target) if self.mode == "min" else (value >= self.target):
                self.reached = {"trial_id": trial_id, "value": value, "target": self.target}
                write_atomic(Path(self.run_root) / TARGET, json.dumps(self.reached))
        return False

    def stop_all(self) -> bool:
        return self.reached is not None


def target_reached(run: RunDir) -> dict | None:
    """What `TargetStopper` recorded: a sweep that reached its target runs no more trials."""
    path = run.root / TARGET
    return json.loads(path.read_text()) if path.is_file() else None


class Outcomes(tune.Callback):
    """On the driver: gives every trial that Tune ended an `outcome.json`, when its process
    could not write one (it failed to start, or its actor ended first), and prints a line."""

    def __init__(self, run_root: str) -> None:
        self.run_root, self._console = run_root, None

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # A trial whose script ended wrote its outcome before it returned: one without an
        # outcome yet was stopped (by the scheduler or the target) and is writing it now.
        self._record(trial, "stopped", None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._record(trial, "error", f"the trial failed; Tune's record: {trial.error_file}")

    def _record(self, trial, status: str, error: str | None) -> None:
        folder = records.trial_folder(self.run_root, trial.trial_id)
        if not records.has_outcome(folder):
            folder.mkdir(parents=True, exist_ok=True)
            last = trial.last_result or {}
            kept = {k: last[k] for k in ("last", "best", "logged", "nonfinite") if k in last}
            values = records.Values(**kept)
            records.write_outcome(folder, status, values, None, error)
        self._show(trial, records.read(folder))

    def _show(self, trial, outcome: dict) -> None:
        if self._console is None:
            self._console = Console(stderr=True)
        status = outcome.get("status")
        style = {"done": "green", "stopped": "yellow"}.get(status, "red")
        last = outcome.get("last")
        detail = f" last {last:.6g}" if isinstance(last, float) else ""
        self._console.print(f"[{style}]{status}[/] {trial.trial_id}{detail}", highlight=False)
