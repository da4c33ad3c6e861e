"""The sweep's progress while trials run: a rich display fed by a Tune callback."""

from __future__ import annotations

from ray import tune
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class TrialProgress(tune.Callback):
    """One bar for the sweep and one per running trial (steps), with the latest eval loss.

    Holds no rich objects until `setup`, because Tune pickles callbacks with the experiment.
    """

    def __init__(self, total_trials: int, metric: str = "eval_loss") -> None:
        self.total_trials = total_trials
        self.metric = metric
        self._progress = None

    def setup(self, **info) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._sweep = self._progress.add_task("trials", total=self.total_trials, status="")
        self._bars: dict[str, int] = {}
        self._progress.start()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        bar = self._bar(trial, result.get("total_steps"))
        value = result.get(self.metric)
        status = f"{self.metric} {value:.4f}" if isinstance(value, float) else ""
        self._progress.update(bar, completed=result.get("step", 0), status=status)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, "[green]done")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, "[red]failed")

    def on_experiment_end(self, trials, **info) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _bar(self, trial, total) -> int:
        if trial.trial_id not in self._bars:
            self._bars[trial.trial_id] = self._progress.add_task(
                f"  {_name(trial)}", total=total, status=""
            )
        return self._bars[trial.trial_id]

    def _finish(self, trial, status: str) -> None:
        if trial.trial_id in self._bars:
            self._progress.remove_task(self._bars.pop(trial.trial_id))
        self._progress.advance(self._sweep)
        value = trial.last_result.get(self.metric)
        detail = f" {self.metric} {value:.4f}" if isinstance(value, float) else ""
        self._progress.console.print(f"{status}[/] {_name(trial)}{detail}", highlight=False)


def _name(trial) -> str:
    """The trial's name as its results give it (Tune's id before its first result)."""
    return (trial.last_result or {}).get("name") or trial.trial_id
