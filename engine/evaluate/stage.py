"""The evaluate stage of a sweep: every candidate (the base model, finished trials, merges) on
every evaluation set, through the actor pool of `engine.evaluate.pool`.

The sets are each task's `eval` file (split `selection`) and `test` file (split `test`), then the
sweep's own `evaluate.sets`. A resumed sweep evaluates only the candidates that have no complete
results in `evals.parquet` yet.
"""

from __future__ import annotations

import time

import pandas as pd

from engine.core.progress import finished
from engine.core.rundir import RunDir, write_table
from engine.evaluate.pool import Candidate, evaluate_candidates
from engine.evaluate.sets import sweep_sets
from sweeps import Sweep
from sweeps.evaluation import EvalSetConfig, HarnessSetConfig


def sweep_candidates(
    trials: pd.DataFrame, merges: pd.DataFrame | None, base: str
) -> list[Candidate]:
    """The base model, every finished trial's final checkpoint, and every merge that ran."""
    found = [Candidate("base", "base", base)]
    for row in trials[trials["status"] == "done"].itertuples():
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
    """Evaluate the candidates not evaluated yet (and merges made in this run); write and return
    `evals.parquet`'s table."""
    sets = sweep_sets(sweep)
    if not sets:
        return None
    candidates = sweep_candidates(trials, merges, base)
    remade = set() if merges is None else set(merges.loc[~merges["reused"], "candidate"])
    previous = _complete(run, [c for c in candidates if c.name not in remade], sets)
    done = set(previous["candidate"]) if not previous.empty else set()
    todo = [c for c in candidates if c.name not in done]
    started = time.time()
    fresh = evaluate_candidates(todo, sets, sweep.evaluate, progress=progress) if todo else None
    if progress and fresh is not None:
        finished(
            f"evaluating {len(todo)} candidate(s) on {len(sets)} set(s) with "
            f"{fresh.attrs.get('actors', 0)} actor(s)",
            started,
        )
    table = pd.concat(
        [t for t in (previous, fresh) if t is not None and not t.empty], ignore_index=True
    )
    write_table(table, run.evals)
    return table


def _complete(
    run: RunDir, candidates: list[Candidate], sets: list[EvalSetConfig | HarnessSetConfig]
) -> pd.DataFrame:
    """Rows of earlier runs for candidates that have results on every set, all of them ok (an
    `lm_eval` set's results are one set per listed task name, see `HarnessSetConfig.tasks`)."""
    if not run.evals.is_file():
        return pd.DataFrame()
    table = pd.read_parquet(run.evals)
    names = {c.name for c in candidates}
    wanted = {name for s in sets for name in s.result_names()}
    keep = []
    for _name, rows in table[table["candidate"].isin(names)].groupby("candidate"):
        if set(rows["eval_set"]) == wanted and (rows["status"] == "ok").all():
            keep.append(rows)
    return pd.concat(keep, ignore_index=True) if keep else pd.DataFrame()
