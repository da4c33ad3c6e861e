"""Tune's saved experiment state in `tune/`: whether Tune can restore it, and setting it aside
so that the experiment is rebuilt from the trials' folders.

Tune 2.60 restores an experiment from `tuner.pkl`, the newest `experiment_state-*.json` (the
trials and their statuses) and the newest `basic-variant-state-*.json` (which trials the grid
has made) or, with a learning searcher, `search_gen_state-*.json` and `searcher-state-*.pkl`
(the searcher and what it was told), and the newest `callback-states-*.pkl` (the
scheduler's state, `engine/train/schedulers.py`). When one of them is missing or unreadable,
Tune logs "Failed to restore the run state" and starts a new experiment, every trial again
under a new id (or, for the callbacks' state, raises). raysoup checks them first and stops
instead (`damage`); `raysoup resume --rebuild-state` moves them aside (`set_aside`) and starts
an experiment of the trials that have not finished, each continuing from the newest complete
checkpoint of its name (`engine/train/records.py`).
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import ray.cloudpickle as cloudpickle

from engine.core import storage
from engine.train import records

TUNER = "tuner.pkl"
EXPERIMENT = "experiment_state-*.json"
SEARCH = "basic-variant-state-*.json"
# A learning searcher's: its wrappers' state (a pickle despite the name), and the searcher's.
SEARCH_GENERATOR, SEARCHER = "search_gen_state-*.json", "searcher-state-*.pkl"
CALLBACKS = "callback-states-*.pkl"  # the callbacks' state: the scheduler's (`KeepState`)
ASIDE = ".damaged-"


def saved(tune_dir: Path) -> bool:
    """Tune saved something of an experiment in `tune_dir`."""
    return (tune_dir / TUNER).exists() or any(tune_dir.glob(EXPERIMENT))


def recorded_no_trial(tune_dir: Path) -> bool:
    """Tune wrote `tuner.pkl` but never saved its trials (a driver killed in its first seconds,
    or, on object storage, before its first upload of them): the trials' folders are all there
    is to know, so rebuilding from them loses nothing."""
    return (tune_dir / TUNER).is_file() and _newest(tune_dir, EXPERIMENT) is None


def damage(tune_dir: Path) -> str | None:
    """What stops Tune from restoring the experiment in `tune_dir`; None when it can be restored
    (or nothing was saved)."""
    if not saved(tune_dir):
        return None
    tuner = tune_dir / TUNER
    if not tuner.is_file() or tuner.stat().st_size == 0:
        return f"{TUNER} is missing or empty"
    experiment = _newest(tune_dir, EXPERIMENT)
    if experiment is None:
        return f"there is {TUNER} but no {EXPERIMENT} (Tune had not saved the trials yet)"
    try:
        trials = json.loads(experiment.read_text())["trial_data"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{experiment.name} cannot be read ({type(err).__name__}: {err})"
    if _newest(tune_dir, CALLBACKS) is not None and (cut := _unreadable(tune_dir, CALLBACKS)):
        return cut
    if _newest(tune_dir, SEARCH_GENERATOR) is not None:
        return _unreadable(tune_dir, SEARCH_GENERATOR) or _unreadable(tune_dir, SEARCHER)
    if _newest(tune_dir, SEARCH) is not None:
        return _unreadable(tune_dir, SEARCH)
    if trials:
        return f"there is {experiment.name} but no {SEARCH} (which trials the grid made)"
    return None


def _unreadable(tune_dir: Path, pattern: str) -> str | None:
    """Why the newest pickle of `pattern` cannot be read: missing, cut or damaged."""
    found = _newest(tune_dir, pattern)
    if found is None:
        return f"there is no {pattern}"
    try:
        cloudpickle.loads(found.read_bytes())
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        return f"{found.name} cannot be read ({type(err).__name__}: {err})"
    return None


def _newest(tune_dir: Path, pattern: str) -> Path | None:
    found = sorted(tune_dir.glob(pattern))  # Tune names them by time: the last is the newest
    return found[-1] if found else None


def started_trials(tune_dir: Path) -> int:
    """How many trial folders have a recorded attempt (work a fresh experiment must not lose)."""
    if not tune_dir.is_dir():
        return 0
    return sum(1 for d in tune_dir.iterdir() if d.is_dir() and records.read_attempts(d))


def set_aside(tune_dir: Path) -> Path:
    """Move Tune's experiment files (not the trials' folders) into `tune/.damaged-<time>/`, so
    a new experiment starts in `tune/`; returns that folder. On object storage they are deleted
    there (the copy here keeps them aside), so no later pull brings them back."""
    aside = tune_dir / f"{ASIDE}{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    aside.mkdir()
    for path in tune_dir.iterdir():
        if path.is_file():
            storage.delete(path)
            path.rename(aside / path.name)
    return aside
