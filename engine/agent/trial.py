"""One trial of a W&B script sweep: the script run for one configuration, as W&B's agent runs
it, inside a Tune function trainable.

The script gets what the agent gives it (`Agent._command_run` in `wandb/wandb_agent.py`):
its configuration in `<WANDB_DIR>/wandb/sweep-<id>/config-<run id>.yaml` as `{name: {value:
v}}`, named by `WANDB_SWEEP_PARAM_PATH`, which `wandb.init()` reads into `wandb.config`
(`_WandbSetup.config` in `wandb/sdk/wandb_setup.py`); its run id in `WANDB_RUN_ID`; the agent's
environment otherwise, less `WANDB_SERVICE`; stdin closed; a process group of its own. raysoup
adds `WANDB_DIR` (the trial's folder, so the run lands in `<trial>/wandb/`), `WANDB_MODE`
(offline unless asked), and a flush of the run file every quarter second, so that the trial
can read the metric's values while the script runs.

Each new value of the metric in the script's run file is reported to Tune, so Tune's
`training_iteration` counts the values the script logged: W&B's hyperband iteration. When Tune
stops the trial, the script gets SIGTERM, and SIGKILL (its process group) `grace_s` seconds
later; the trial's actor waits for that before it exits (`EndsItsScript`).
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import string
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from engine.agent import command, records
from engine.agent.records import Values
from engine.agent.runfile import MetricTail

METRIC = "metric"  # the key of the metric's value in each report (its name may be Tune's)
FLUSH_S = "0.25"  # WANDB__TRANSACTION_LOG_FLUSH_INTERVAL: W&B's default is 15 seconds
STDERR_TAIL = 20  # lines of the script's stderr in a failed trial's error
DRAIN_S = 5.0  # how long the run file may still grow after its script exited
SETTLE_S = 5.0  # how long a stopped trial's actor waits for its thread to record the stop


class ScriptFailed(RuntimeError):
    """The script exited with an error, or logged no value of the metric."""


@dataclass(frozen=True)
class ScriptSpec:
    """What every trial of one W&B script sweep shares."""

    run_root: str  # the run directory
    cwd: str  # the sweep file's folder: where the script runs
    command: tuple[Any, ...] | None
    program: str | None
    paths: tuple[command.KeyPath, ...]  # the parameters' key paths
    metric: str | None
    goal: str = "minimize"
    wandb_mode: str = "offline"
    sweep_label: str = "raysoup"  # the sweep id, or the experiment's name
    sweep_id: str | None = None  # WANDB_SWEEP_ID, when given
    project: str | None = None
    entity: str | None = None
    grace_s: float = 5.0  # from SIGTERM to SIGKILL
    poll_s: float = 0.1


@dataclass(frozen=True)
class Launch:
    """One start of the script: its folder, command line, environment and W&B run id."""

    folder: Path
    argv: list[str]
    env: dict[str, str]
    cwd: str
    run_id: str


def run_trial(config: dict, spec: ScriptSpec) -> None:
    """A Tune function trainable: runs the script on `config["params"]` and reports each new
    value of the metric. Raises `ScriptFailed` when the script failed or logged no value."""
    folder = records.trial_folder(spec.run_root, tune.get_context().get_trial_id())
    launch = prepare(spec, config["params"], folder)
    values = Values(goal=spec.goal)
    script = Script(launch, spec.grace_s, config["params"])
    try:
        try:
            with script:
                follow(script, spec, launch, values)
        except SystemExit:  # Tune stopped the trial: its scheduler, or the metric's target
            records.write_outcome(folder, "stopped", values, script.process.returncode, None)
            raise
        except OSError as err:  # the command could not start
            message = f"could not run {launch.argv[0]}: {err}"
            records.write_outcome(folder, "error", values, None, message)
            raise ScriptFailed(message) from err
        if script.stopped:  # by its actor, as Tune ended the trial
            records.write_outcome(folder, "stopped", values, script.process.returncode, None)
            return
        conclude(folder, script.process.returncode, spec.metric, values)
    finally:
        script.settled.set()


def prepare(spec: ScriptSpec, params: dict, folder: Path) -> Launch:
    """Writes the configuration where W&B's agent writes it and builds the command line."""
    run_id = new_run_id()
    records.clear_outcome(folder)  # an errored trial that a resume runs again
    sweep_dir = folder / "wandb" / f"sweep-{spec.sweep_label}"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    args = command.wandb_args(spec.paths, params)
    param_file, json_file = sweep_dir / f"config-{run_id}.yaml", sweep_dir / f"config-{run_id}.json"
    param_file.write_text(param_text(args))
    if command.uses_json_file(spec.command, os.environ):
        json_file.write_text(command.args_json(args))
    env = environment(spec, folder, run_id, param_file)
    # The agent fills the command from its own environment, before it adds the run's.
    argv = command.argv(
        spec.command, spec.program, args, os.environ, sys.executable, str(json_file)
    )
    return Launch(folder, argv, env, spec.cwd, run_id)


def new_run_id() -> str:
    """A W&B run id: 8 lower-case letters and digits, as W&B makes them."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def param_text(args: dict[str, dict]) -> str:
    """The parameter file's text as the agent writes it (`save_config_file_from_dict` in
    `wandb/sdk/lib/config_util.py`): a version line, then `{name: {value: v}}` as YAML."""
    body = yaml.safe_dump(args, default_flow_style=False, allow_unicode=True, sort_keys=False)
    return "wandb_version: 1\n\n" + body


def environment(spec: ScriptSpec, folder: Path, run_id: str, param_file: Path) -> dict[str, str]:
    """The script's environment: this process's, with the run's W&B variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", "WANDB_SWEEP_ID")}
    env.update(
        WANDB_DIR=str(folder),
        WANDB_RUN_ID=run_id,
        WANDB_SWEEP_PARAM_PATH=str(param_file),
        WANDB_MODE=spec.wandb_mode,
        WANDB__TRANSACTION_LOG_FLUSH_INTERVAL=FLUSH_S,
    )
    given = {
        "WANDB_SWEEP_ID": spec.sweep_id,
        "WANDB_PROJECT": spec.project,
        "WANDB_ENTITY": spec.entity,
    }
    env.update({name: value for name, value in given.items() if value})
    return env


class Script:
    """The script's process, in its own process group, its output in the trial's folder. On
    leaving (the script ended, Tune stopped the trial, or the trial's process exits) a script
    still running gets SIGTERM, and its process group SIGKILL after `grace_s` seconds."""

    def __init__(self, launch: Launch, grace_s: float, params: dict) -> None:
        self.launch, self.grace_s, self.params = launch, grace_s, params
        self.lock = threading.Lock()
        self.started = time.time()
        self.stopped = False  # ended by `stop`: Tune ended the trial
        self.settled = threading.Event()  # the trial recorded how it ended

    def __enter__(self) -> Script:
        folder, launch = self.launch.folder, self.launch
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        with open(folder / "stdout.txt", "wb") as out, open(folder / "stderr.txt", "wb") as err:
            self.process = subprocess.Popen(
                launch.argv,
                cwd=launch.cwd,
                env=launch.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                **group,
            )
        LIVE.add(self)
        records.write_start(
            folder,
            params=self.params,
            argv=launch.argv,
            cwd=launch.cwd,
            pid=self.process.pid,
            wandb_run_id=launch.run_id,
            started=self.started,
        )
        return self

    def __exit__(self, *exc) -> None:
        self.end()

    def stop(self) -> None:
        """Ends the script because Tune ended its trial."""
        self.stopped = True
        self.end()

    def end(self) -> None:
        """Ends the script if it still runs (SIGTERM, then SIGKILL to its group after
        `grace_s`), and what it started and left behind."""
        with self.lock:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(self.grace_s)
                except subprocess.TimeoutExpired:
                    pass
            self._kill_group()
            if self.process.poll() is None:  # it left its group
                self.process.kill()
            self.process.wait()
            LIVE.discard(self)

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is empty


LIVE: set[Script] = set()


class EndsItsScript:
    """Mixed into the trial's Tune trainable (Tune's `wrap_function` reads `__mixins__`): when
    Tune ends the trial, its actor ends the script and waits for the trial's thread to record
    the stop before it exits. Tune's own `cleanup` returns at once (`session.finish(timeout=0)`)
    and an exiting Ray worker SIGKILLs its child processes, so without this the script could be
    killed before its SIGTERM handler ran."""

    def cleanup(self) -> None:
        running = list(LIVE)
        for script in running:
            script.stop()
        try:
            super().cleanup()  # releases a thread waiting in `tune.report`
        finally:
            for script in running:
                script.settled.wait(SETTLE_S)


run_trial.__mixins__ = (EndsItsScript,)


@atexit.register
def _end_live() -> None:
    # A last resort, for a trial process that exits another way than through Tune's stop.
    for script in list(LIVE):
        script.end()


def follow(script: Script, spec: ScriptSpec, launch: Launch, values: Values) -> None:
    """Reports each new value of the metric in the script's run file until the script ends."""
    if spec.metric is None:
        script.process.wait()
        return
    tail = MetricTail(launch.folder / "wandb", launch.run_id, spec.metric, script.started)
    ended_at = None
    while not script.stopped:
        if ended_at is None and script.process.poll() is not None:
            ended_at = time.monotonic()
        for value in tail.new_values():
            values.add(value)
            tune.report({METRIC: value, **values.fields(), "wandb_run_id": launch.run_id})
        # W&B's service writes the run file after the script's process is gone: read on until
        # its exit record (a script that died has none: a few seconds' grace).
        if ended_at is not None and (tail.exited or time.monotonic() - ended_at > DRAIN_S):
            return
        time.sleep(spec.poll_s)


def conclude(folder: Path, exit_code: int, metric: str | None, values: Values) -> None:
    """Writes how the script ended; raises `ScriptFailed` when it failed or logged nothing."""
    error = None
    if exit_code != 0:
        error = f"the script {_exit(exit_code)}; the end of its stderr:\n{_tail(folder)}"
    elif metric is not None and values.logged == 0:
        error = (
            f"the script exited with code 0 but logged no value of {metric!r} (metric.name) "
            "with wandb.log; a value set only in the run's summary does not count"
        )
    records.write_outcome(folder, "error" if error else "done", values, exit_code, error)
    if error:
        raise ScriptFailed(error)


def _exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _tail(folder: Path) -> str:
    try:
        lines = (folder / "stderr.txt").read_text(errors="replace").splitlines()
    except OSError:
        return "(no stderr.txt)"
    return "\n".join(lines[-STDERR_TAIL:]) or "(empty)"
