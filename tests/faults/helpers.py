"""Reading a run directory the way the fault tests judge it: which stage the driver is in,
what is finished, and that nothing finished was redone or lost."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pandas as pd

from engine.train import records

STAGES = ("prepare", "train", "merge", "evaluate", "report")


def pairs(run: Path) -> int:
    """How many (candidate, set) pairs `evals.parquet` holds."""
    try:
        table = pd.read_parquet(run / "evals.parquet")
    except (OSError, ValueError):
        return 0
    return len(table.drop_duplicates(["candidate", "eval_set"]))


def stage_of(run: Path, all_pairs: int) -> str | None:
    """The stage a run directory shows the driver in (None: starting, or finished)."""
    if (run / "report.html").exists():
        return None
    if (run / "evals.parquet").exists():
        return "report" if pairs(run) >= all_pairs else "evaluate"
    if (run / "trials.parquet").exists():
        return "merge"
    if any((run / "tune").glob("*/attempts.jsonl")):
        return "train"
    if (run / "data").exists() and not (run / "data" / "manifest.json").exists():
        return "prepare"
    return None


def wait(proc, condition, timeout: float = 600):
    """Poll `condition()` until it is truthy (returned), while `proc` runs."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            out = proc.stdout.read() if getattr(proc, "stdout", None) else ""
            raise AssertionError(f"the driver ended first:\n{out}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def kill_driver(proc, run: Path) -> str | None:
    """SIGKILL the driver alone (not its process group, as an OOM kill or a lost machine
    would); returns the session folder of the local Ray cluster it had started."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lock = (run / ".raysoup.lock").read_text()
    return json.loads(lock).get("ray_session") if lock.strip() else None


def done_trials(run: Path) -> dict[str, str]:
    """Each finished trial's folder and a digest of its `result.json` and final checkpoint."""
    found = {}
    for folder in (run / "tune").glob("*/attempts.jsonl"):
        kept = records.complete_checkpoints([folder.parent])
        if kept and records.is_final(kept[-1]):
            digest = hashlib.sha256()
            for path in [folder.parent / "result.json", *sorted(kept[-1].iterdir())]:
                digest.update(path.name.encode() + (path.read_bytes() if path.exists() else b""))
            found[folder.parent.name] = digest.hexdigest()
    return found


def evals_rows(run: Path) -> dict[tuple, tuple]:
    """Each evaluation row of `evals.parquet` by (candidate, set, metric)."""
    if not (run / "evals.parquet").exists():
        return {}
    table = pd.read_parquet(run / "evals.parquet")
    return {
        (r.candidate, r.eval_set, r.metric): (r.value, r.seconds, r.status)
        for r in table.itertuples()
    }


def lost_records(run: Path, before: dict) -> int:
    """Finished trials changed or gone, and evaluation rows changed or gone, since `before`
    (`{"trials": done_trials, "evals": evals_rows}` as they were at the faults)."""
    after_trials, after_evals = done_trials(run), evals_rows(run)
    lost = sum(after_trials.get(name) != d for name, d in before["trials"].items())
    return lost + sum(after_evals.get(key) != v for key, v in before["evals"].items())


def check_complete(run: Path) -> None:
    """Every trial done, each merge and each evaluation exactly once and ok."""
    trials = pd.read_parquet(run / "trials.parquet")
    assert set(trials["status"]) == {"done"} and trials["name"].is_unique, trials
    started = {records.recorded_name(f.parent) for f in (run / "tune").glob("*/attempts.jsonl")}
    assert started == set(trials["name"])  # no trial started under another name
    merges = pd.read_parquet(run / "merges.parquet")
    assert merges["candidate"].is_unique and set(merges["status"]) == {"done"}, merges
    evals = pd.read_parquet(run / "evals.parquet")
    assert not evals.duplicated(["candidate", "eval_set", "metric"]).any()
    assert set(evals["candidate"]) == {"base", *trials["name"], *merges["candidate"]}
    assert set(evals["status"]) == {"ok"}, evals[evals["status"] != "ok"]
