"""What a trial of a W&B script sweep writes in its folder, `<run dir>/trials/<trial id>/`, and
reads back without Ray:

  trial.json     when the script started: its parameters, command line, process id and the
                 W&B run id it was given
  outcome.json   how it ended: done, error or stopped, with the metric's values
  stdout.txt, stderr.txt, wandb/   the script's output and its W&B run
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.core.rundir import write_atomic

TRIALS = "trials"
STATUSES = ("done", "stopped", "error")


def trial_folder(run_root: str | Path, trial_id: str) -> Path:
    return Path(run_root) / TRIALS / trial_id


@dataclass
class Values:
    """The values a trial's script logged of the metric, as they were reported to Tune."""

    goal: str = "minimize"
    last: float | None = None
    best: float | None = None
    logged: int = 0
    nonfinite: int = 0

    def add(self, value: float) -> None:
        self.last, self.logged = value, self.logged + 1
        if not math.isfinite(value):
            self.nonfinite += 1
            return
        better = min if self.goal == "minimize" else max
        self.best = value if self.best is None else better(self.best, value)

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "goal"}


def write_start(folder: Path, **fields: Any) -> None:
    """`trial.json`: the script's parameters, command line, pid and W&B run id."""
    write_atomic(folder / "trial.json", json.dumps(fields, indent=1, default=str))


def write_outcome(
    folder: Path, status: str, values: Values, exit_code: int | None, error: str | None
) -> None:
    """`outcome.json`: how the trial ended."""
    outcome = {"status": status, **values.fields(), "exit_code": exit_code, "error": error}
    write_atomic(folder / "outcome.json", json.dumps(outcome, indent=1))


def read(folder: Path) -> dict[str, Any]:
    """A trial's `trial.json` and `outcome.json` together (`status` is `unfinished` when the
    trial has no outcome: it was running when its driver or node went away)."""
    record = _json(folder / "trial.json")
    outcome = _json(folder / "outcome.json") or {"status": "unfinished"}
    return {**record, **outcome}


def folders(run_root: str | Path) -> list[Path]:
    """The folders of the trials that started, by trial id."""
    return sorted(p.parent for p in (Path(run_root) / TRIALS).glob("*/trial.json"))


def wait_for_outcomes(run_root: str | Path, seconds: float) -> list[Path]:
    """Waits up to `seconds` for each started trial to record how it ended (a trial that Tune
    stopped as the experiment ended writes it once its script is gone); the folders still
    without one."""
    deadline = time.monotonic() + seconds
    while True:
        missing = [f for f in folders(run_root) if not has_outcome(f)]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(0.2)


def clear_outcome(folder: Path) -> None:
    (folder / "outcome.json").unlink(missing_ok=True)


def has_outcome(folder: Path) -> bool:
    return (folder / "outcome.json").is_file()


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
