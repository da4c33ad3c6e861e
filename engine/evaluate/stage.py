"""The evaluate stage of a sweep: every candidate (the base model, finished trials, merges) on
every evaluation set, through the actor pool of `engine.evaluate.pool`.

The sets are each task's `eval` file (split `selection`) and `test` file (split `test`), then the
sweep's own `evaluate.sets`. Finished (candidate, set) pairs are written to `evals.parquet` as
they come (at most every `WRITE_EVERY_S` seconds, and whatever ends the stage), and a resumed
sweep evaluates only the pairs that have no `ok` results there yet.
"""

from __future__ import annotations

import math
import time

import pandas as pd

from engine.core.progress import finished
from engine.core.rundir import RunDir, write_table
from engine.evaluate.pool import COLUMNS, Candidate, evaluate_candidates
from engine.evaluate.sets import sweep_sets
from sweeps import Sweep
from sweeps.evaluation import EvalSetConfig, HarnessSetConfig
from sweeps.trials import with_result

# `evals.parquet` is rewritten whole; every pair would make the stage quadratic in candidates.
WRITE_EVERY_S = 2.0


def sweep_candidates(
    trials: pd.DataFrame, merges: pd.DataFrame | None, base: str
) -> list[Candidate]:
    """The base model, every trial's result (its final checkpoint, or the newest one of a
    trial the scheduler stopped), and every merge that ran."""
    found = [Candidate("base", "base", base)]
    for row in with_result(trials).itertuples():
        found.append(Candidate(row.name, "trial", row.checkpoint, base=base))
    if merges is not None:
        for row in merges[merges["status"] == "done"].itertuples():
            found.append(Candidate(row.candidate, row.kind, row.path))
    return found


def eval_stage(
    sweep: Sweep,
    run: RunDir,
    trials: pd.DataFrame,
    merges: pd.DataFrame | None,
    base: str,
    progress: bool = True,
) -> pd.DataFrame | None:
    """Evaluate what is missing: every (candidate, set) without `ok` results in
    `evals.parquet`, and every set of a merge made in this run. Finished pairs are added to
    `evals.parquet` as they come and whatever ends the stage (a Ctrl-C, an error), so a run
    stopped here loses none of them, and a killed driver at most the last `WRITE_EVERY_S`
    seconds; returns the whole table."""
    sets = sweep_sets(sweep)
    if not sets:
        return None
    candidates = sweep_candidates(trials, merges, base)
    remade = set() if merges is None else set(merges.loc[~merges["reused"], "candidate"])
    previous = _complete(run, [c for c in candidates if c.name not in remade], sets)
    done = set(zip(previous["candidate"], previous["eval_set"])) if not previous.empty else set()
    only = {
        c.name: {s.name for s in sets if not all((c.name, r) in done for r in s.result_names())}
        for c in candidates
    }
    todo = [c for c in candidates if only[c.name]]
    journal = _Journal(run, previous, candidates, sets)
    started = time.time()
    try:
        if todo:
            evaluate_candidates(
                todo, sets, sweep.evaluate, progress=progress, only=only, on_result=journal.add
            )
    finally:  # also what came before a Ctrl-C or an error
        table = journal.write()
    if progress and todo:
        finished(
            f"evaluating {len(todo)} candidate(s) on {len(sets)} set(s) "
            f"({sum(len(only[c.name]) for c in todo)} candidate-set pairs)",
            started,
        )
    return table


class _Journal:
    """`evals.parquet` as it grows: the rows kept from earlier runs, then each (candidate, set)
    as it finishes, rewritten atomically (at once for the first pair, then at most every
    `WRITE_EVERY_S` seconds), in candidate and set order."""

    def __init__(self, run: RunDir, previous: pd.DataFrame, candidates, sets) -> None:
        self.run, self.parts = run, [previous] if not previous.empty else []
        self.candidates = {c.name: i for i, c in enumerate(candidates)}
        self.sets = {name: i for i, s in enumerate(sets) for name in s.result_names()}
        self.written = -math.inf

    def add(self, rows: pd.DataFrame) -> None:
        self.parts.append(rows)
        if time.monotonic() - self.written >= WRITE_EVERY_S:
            self.write()

    def write(self) -> pd.DataFrame:
        parts = self.parts or [pd.DataFrame(columns=COLUMNS)]
        table = pd.concat(parts, ignore_index=True)
        if not table.empty:
            order = table["candidate"].map(self.candidates) * 10_000 + table["eval_set"].map(
                self.sets
            ).fillna(9_999)
            table = table.iloc[order.argsort(kind="stable")].reset_index(drop=True)
        write_table(table, self.run.evals)
        self.parts, self.written = [table], time.monotonic()
        return table


def _complete(
    run: RunDir, candidates: list[Candidate], sets: list[EvalSetConfig | HarnessSetConfig]
) -> pd.DataFrame:
    """Rows of earlier runs for (candidate, set) pairs whose rows are all ok (an `lm_eval`
    set's results are one set per listed task name, see `HarnessSetConfig.tasks`)."""
    if not run.evals.is_file():
        return pd.DataFrame()
    table = pd.read_parquet(run.evals)
    names = {c.name for c in candidates}
    wanted = {name for s in sets for name in s.result_names()}
    keep = []
    for _pair, rows in table[table["candidate"].isin(names)].groupby(["candidate", "eval_set"]):
        if rows["eval_set"].iloc[0] in wanted and (rows["status"] == "ok").all():
            keep.append(rows)
    return pd.concat(keep, ignore_index=True) if keep else pd.DataFrame()
