"""What a sweep produced, as the Python API returns it: `SweepResult`, read from a run directory
without Ray."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from engine.core.rundir import RunDir
from engine.report.board import candidate_board, winners
from engine.report.scaling import load_scaling
from engine.train.table import ranked
from sweeps import Sweep, SweepError


@dataclass
class SweepResult:
    """What a sweep produced: its run directory, one row per trial, one per merge job, and the
    evaluations of every candidate (None for stages the sweep does not have)."""

    run_dir: Path
    sweep: Sweep
    trials: pd.DataFrame
    merges: pd.DataFrame | None = None
    evals: pd.DataFrame | None = None

    def leaderboard(self) -> pd.DataFrame:
        """Trials best first by the sweep's metric."""
        return ranked(self.trials, self.sweep)

    def best(self) -> pd.Series:
        """The model to use: the first of the candidate leaderboard (its `candidate` name and
        `path`, scores and intervals); without evaluation sets, the best trial by `metric`."""
        board = self.candidates()
        return board.iloc[0] if board is not None else self.leaderboard().iloc[0]

    def failures(self) -> list[str]:
        """Every trial, merge and evaluation that failed, each with where its error is; empty
        when nothing failed."""
        found = [
            f"trial {t['name']} failed: {t['error']} (traceback: {t['path']}/error.txt)"
            for t in self.trials[self.trials["status"] == "error"].to_dict("records")
        ]
        found += [
            f"trial {t['name']} did not finish (step {t['steps']}); `raysoup resume "
            f"{self.run_dir}` continues it"
            for t in self.trials[self.trials["status"] == "incomplete"].to_dict("records")
        ]
        if self.merges is not None:
            found += [
                f"merge {m['candidate']} failed: {m['error']} (merges.parquet)"
                for m in self.merges[self.merges["status"] == "failed"].to_dict("records")
            ]
        if self.evals is not None:
            failed = self.evals[self.evals["status"] != "ok"]
            found += [
                f"evaluation of {e['candidate']} on {e['eval_set']} failed: {e['error']} "
                "(evals.parquet)"
                for e in failed.drop_duplicates(["candidate", "eval_set"]).to_dict("records")
            ]
        return found

    def winners(self) -> pd.DataFrame | None:
        """Each task's best candidate on its own selection set; None without evaluations."""
        return winners(self.sweep, self.evals)

    def candidates(self) -> pd.DataFrame | None:
        """Every evaluated candidate (base, trials, merges) ranked by its selection score, with
        each merge's gain over its ingredients on test; None without evaluations."""
        return candidate_board(self.sweep, self.trials, self.merges, self.evals)

    def scaling(self) -> dict | None:
        """The scaling-law analysis (`scaling.json`): the fitted law per group, its held-out
        error, intervals and predictions; None when the sweep has no data-scale axis."""
        return load_scaling(self.run_dir)


def load_result(run_dir: str | Path) -> SweepResult:
    """The result of a finished sweep, read from its run directory."""
    run = RunDir.at(run_dir)
    run.pull()  # on object storage: into this machine's copy (weights stay there)
    sweep = run.load_sweep()
    if not run.trials.is_file():
        raise SweepError(
            f"{run.location}: no trials.parquet yet; finish the sweep with "
            f"`raysoup resume {run.location}`"
        )

    def table(path: Path) -> pd.DataFrame | None:
        return pd.read_parquet(path) if path.is_file() else None

    return SweepResult(
        run.root, sweep, table(run.trials), table(run.merges_table), table(run.evals)
    )
