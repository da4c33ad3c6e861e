"""What a trial leaves in its folder under `tune/`, written by the trial itself, and read back
without Ray or Tune.

- `checkpoint_<step>/`: a checkpoint, published by renaming a finished folder into place; its
  marker `complete.json` (the step and every file's size) is written last, before the rename,
  so a folder of that name is complete or absent. A checkpoint without a valid marker (or whose
  files no longer match it) never counts: not to resume from, not to merge, not to evaluate.
- `attempts.jsonl`: one line per start of the trial (when, where, from which step).
- `stopped.json`: written by the driver when the sweep's scheduler stopped the trial before
  its last step (at which step, by which scheduler, the metric then).
- `paused.json`: written by the driver when the scheduler pauses a worker-group trial (the
  step of the report it was judged at, and an id); the next attempt continues from that step
  and records the id, so the pause is taken up once.

A trial is *done* when its newest complete checkpoint is at its last step, and *stopped* when
the scheduler ended it before (its newest complete checkpoint is then its result). A trial that Tune
starts again under a new id (a rebuilt experiment, or a state saved before the trial was
created) finds its checkpoints by its name in the other folders, so no finished work is lost.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from engine.core import storage
from engine.core.models import TRIAL_INFO
from engine.core.rundir import write_atomic

PREFIX = "checkpoint_"
MARKER = "complete.json"
ATTEMPTS = "attempts.jsonl"
STOPPED = "stopped.json"
PAUSED = "paused.json"
PARTIAL = ".partial-"


def folder_name(trial_id: str, name: str) -> str:
    """A trial's folder under `tune/`: Tune's id, then the trial's name
    (`bdf2d_00011-add-n1000-s0`)."""
    return f"{trial_id}-{name.replace('/', '-')}"


def trial_folders(tune_dir: Path, name: str) -> list[Path]:
    """Every folder of the trial named `name` (one, unless Tune started it under several ids),
    oldest first."""
    if not tune_dir.is_dir():
        return []
    suffix = name.replace("/", "-")
    found = [
        d
        for d in tune_dir.iterdir()
        if d.is_dir() and "-" in d.name and d.name.split("-", 1)[1] == suffix
    ]
    found = [d for d in found if recorded_name(d) in (name, None)]
    return sorted(found, key=_last_started)


def _last_started(folder: Path) -> tuple[float, float]:
    """When the folder's newest attempt started (before it, the folder's own time)."""
    started = [a.get("started_at", 0.0) for a in read_attempts(folder)]
    return max(started, default=0.0), folder.stat().st_mtime


def recorded_name(folder: Path) -> str | None:
    """The trial name an attempt recorded in `folder` (None before its first attempt)."""
    attempts = read_attempts(folder)
    return attempts[0].get("name") if attempts else None


# -- checkpoints ---------------------------------------------------------------------------


def publish(source: Path, trial_dir: Path, step: int) -> Path:
    """Move the checkpoint folder `source` into `trial_dir` as `checkpoint_<step>`, complete:
    the files are moved first, the marker written last, then the folder renamed into place."""
    final = trial_dir / f"{PREFIX}{step:06d}"
    partial = staging_folder(trial_dir, step, os.getpid())
    try:
        if source != partial:  # not staged in place by a worker group
            shutil.rmtree(partial, ignore_errors=True)
            _move(source, partial)
        files = {
            str(p.relative_to(partial)): p.stat().st_size
            for p in sorted(partial.rglob("*"))
            if p.is_file()
        }
        marker = {"step": step, "saved_at": time.time(), "files": files}
        write_atomic(partial / MARKER, json.dumps(marker, indent=2))
        if final.exists():  # an earlier attempt saved this step: the same state, made again
            shutil.rmtree(final)
        os.rename(partial, final)
        storage.upload(final, last=MARKER)  # on object storage: complete there too, then reported
    except BaseException as err:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(
                err.errno,
                f"no space left on the device of {trial_dir} while saving the checkpoint of "
                f"step {step}; the checkpoints before it are intact",
            ) from err
        raise
    return final


def staging_folder(trial_dir: Path, step: int, owner: int) -> Path:
    """Where process `owner` assembles the checkpoint of `step` before `publish` renames it
    into place; a worker group's ranks all write into their rank 0's."""
    return trial_dir / f".{PREFIX}{step:06d}{PARTIAL}{owner}"


def _move(source: Path, target: Path) -> None:
    """Rename a checkpoint folder, or copy it onto another filesystem."""
    try:
        os.rename(source, target)
        return
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
    shutil.copytree(source, target)


def marker(checkpoint: Path) -> dict | None:
    """The checkpoint's marker when the checkpoint is complete (every file it lists is there,
    at its size); None otherwise."""
    try:
        found = json.loads((checkpoint / MARKER).read_text())
        files = found["files"]
        # A file may be on object storage only, until a process that reads it fetches it.
        complete = all(storage.size(checkpoint / n) == size for n, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return found if complete else None


def complete_checkpoints(folders: list[Path]) -> list[Path]:
    """The complete checkpoints in `folders`, by step (the newest folder's, for a step saved in
    several), up to the step at which the scheduler stopped the trial: a worker group can
    save another before its process is ended, and the scheduler judged the trial by the
    step it stopped it at."""
    by_step: dict[int, Path] = {}
    for folder in folders:
        for path in sorted(folder.glob(f"{PREFIX}*")):
            found = marker(path)
            if found is not None:
                by_step[int(found["step"])] = path
    stop = read_stop(folders)
    last = stop["step"] if stop is not None else math.inf
    return [by_step[step] for step in sorted(by_step) if step <= last]


def checkpoint_info(checkpoint: Path) -> dict:
    """The metrics the trial reported with the checkpoint (its `trial.json`)."""
    try:
        return json.loads((checkpoint / TRIAL_INFO).read_text())
    except (OSError, ValueError):
        return {}


def is_final(checkpoint: Path) -> bool:
    """The checkpoint of a trial's last step."""
    info = checkpoint_info(checkpoint)
    return info.get("step") is not None and info.get("step") == info.get("total_steps")


def prune(trial_dir: Path, keep: int | None) -> None:
    """Delete this folder's complete checkpoints beyond the newest `keep` (None: keep all),
    and partial ones that earlier attempts left."""
    remove_partial(trial_dir)
    if keep is None:
        return
    for old in complete_checkpoints([trial_dir])[:-keep]:
        storage.delete(old)  # first: a checkpoint on storage is never newer than here
        shutil.rmtree(old, ignore_errors=True)


def remove_partial(trial_dir: Path) -> None:
    """Delete the partial checkpoints of attempts whose process is gone."""
    for path in trial_dir.glob(f".{PREFIX}*{PARTIAL}*"):
        pid = path.name.rsplit(PARTIAL, 1)[1]
        if not pid.isdigit() or int(pid) != os.getpid():
            shutil.rmtree(path, ignore_errors=True)


# -- attempts ------------------------------------------------------------------------------


def record_attempt(
    trial_dir: Path,
    name: str,
    resumed_from: int | None,
    cell: dict | None = None,
    clone: dict | None = None,
    pause: dict | None = None,
) -> None:
    """Add a line to the trial's `attempts.jsonl`: who started it, where, from which step, its
    cell (`engine/train/axes.py`: what a learning searcher suggested is known only here), the
    trial it cloned when population-based training made it exploit one, and the pause it
    continues after (`back_to_pause`: its id, and the steps of the checkpoints its group had
    saved past it, deleted)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    line = {
        "name": name,
        "cell": cell,
        "started_at": time.time(),
        "host": socket.gethostname(),
        "node_id": _node_id(),
        "pid": os.getpid(),
        "resumed_from": resumed_from,
        **({"clone": clone} if clone else {}),
        **({"pause": pause["id"], "discarded": pause.get("discarded", [])} if pause else {}),
    }
    with open(trial_dir / ATTEMPTS, "a") as handle:
        handle.write(json.dumps(line) + "\n")
    storage.upload(trial_dir / ATTEMPTS)


def cloned(folders: list[Path], clone: dict) -> bool:
    """Whether an attempt of this trial already made the clone `clone` (one of PBT's exploits:
    a trial restarted later keeps the config that asked for it)."""
    return any(
        (attempt.get("clone") or {}).get("id") == clone["id"]
        for folder in folders
        for attempt in read_attempts(folder)
    )


def clone_source(tune_dir: Path, clone: dict) -> Path | None:
    """The checkpoint a clone continues from: the top trial's at the step of the report PBT
    compared, or its newest when that one was pruned since."""
    done = complete_checkpoints(trial_folders(tune_dir, clone["from"]))
    at = [c for c in done if checkpoint_info(c).get("step") == clone["step"]]
    return at[-1] if at else (done[-1] if done else None)


def discard_checkpoints(folders: list[Path]) -> None:
    """Delete a trial's checkpoints when it clones another: they hold the state it gives up,
    and a resume or a checkpoint average must never read them as its own."""
    for old in complete_checkpoints(folders):
        storage.delete(old)
        shutil.rmtree(old, ignore_errors=True)


def _node_id() -> str | None:
    """The Ray node this process runs on (None outside a Ray worker)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def recorded_cells(tune_dir: Path) -> list[dict]:
    """The cell of every trial started in `tune_dir`, once each, in the order they started."""
    found: dict[str, tuple[float, dict]] = {}
    folders = [d for d in tune_dir.iterdir() if d.is_dir()] if tune_dir.is_dir() else []
    for folder in folders:
        for line in read_attempts(folder):
            if line.get("cell") and line["name"] not in found:
                found[line["name"]] = (line["started_at"], line["cell"])
    return [cell for _, cell in sorted(found.values(), key=lambda item: item[0])]


def read_attempts(folder: Path) -> list[dict]:
    """The attempts recorded in `folder` (a torn last line is left out)."""
    try:
        lines = (folder / ATTEMPTS).read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


# -- early stops -------------------------------------------------------------------------


def record_stop(trial_dir: Path, step: int, by: str, metrics: dict) -> None:
    """Write the trial's `stopped.json`: the scheduler `by` stopped it after `step` (an
    earlier record of the same stop is kept)."""
    if (trial_dir / STOPPED).is_file():
        return
    trial_dir.mkdir(parents=True, exist_ok=True)
    line = {"step": step, "by": by, "at": time.time(), "metrics": metrics}
    write_atomic(trial_dir / STOPPED, json.dumps(line, indent=2))


def record_pause(trial_dir: Path, step: int) -> bool:
    """Write the trial's `paused.json`: the scheduler paused it at its report of `step` (an
    id tells this pause from later ones). Returns whether the file changed: a record of the
    same pause is kept."""
    path = trial_dir / PAUSED
    try:
        if json.loads(path.read_text()).get("step") == step:
            return False
    except (OSError, ValueError, AttributeError):
        pass
    trial_dir.mkdir(parents=True, exist_ok=True)
    line = {"step": step, "id": uuid.uuid4().hex[:12], "at": time.time()}
    write_atomic(path, json.dumps(line, indent=2))
    return True


def back_to_pause(folders: list[Path]) -> dict | None:
    """Where a paused worker-group trial starts again: its checkpoints after the step it was
    paused at are deleted (its group can save another before it learns of the pause, and
    the scheduler judged the trial at that step). Returns the pause (`paused.json`, with the
    steps of the checkpoints deleted as `discarded`) for the attempt to record; None when the
    trial's newest pause was taken up by an earlier attempt, or there is none. The file stays:
    the driver alone writes it."""
    try:
        pause = json.loads((folders[-1] / PAUSED).read_text()) if folders else None
        step, taken = int(pause["step"]), {a.get("pause") for a in read_attempts(folders[-1])}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pause.get("id") in taken:
        return None
    discarded = []
    for later in complete_checkpoints(folders):
        saved = int((marker(later) or {"step": step})["step"])
        if saved > step:
            storage.delete(later)  # first: a checkpoint on storage is never newer than here
            shutil.rmtree(later, ignore_errors=True)
            discarded.append(saved)
    return {**pause, "discarded": discarded}


def read_stop(folders: list[Path]) -> dict | None:
    """The early stop recorded in the trial's newest folder; None when there is none."""
    try:
        return json.loads((folders[-1] / STOPPED).read_text()) if folders else None
    except (OSError, ValueError):
        return None


def is_finished(folders: list[Path]) -> bool:
    """Whether the trial needs no more training: done, or stopped by the scheduler."""
    done = complete_checkpoints(folders)
    return bool(done and is_final(done[-1])) or read_stop(folders) is not None


# -- a trial as its folders tell it --------------------------------------------------------


@dataclass
class TrialRecord:
    """A trial read from its folders: status, metrics, checkpoints, error, attempts."""

    path: Path
    status: str
    metrics: dict
    checkpoints: list[Path] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0
    finished_at: float | None = None
    stop: dict | None = None  # the scheduler's early stop (`stopped.json`)
    where: dict = field(default_factory=dict)  # the newest attempt's host and Ray node id
    clones: list[str] = field(default_factory=list)  # PBT: `<trial>@<step>` it cloned, in order
    values: dict = field(default_factory=dict)  # the searched values of its newest attempt

    @property
    def trial_id(self) -> str:
        return self.path.name.split("-", 1)[0]

    @property
    def checkpoint(self) -> Path | None:
        return self.checkpoints[-1] if self.checkpoints else None


def read_trial(folders: list[Path]) -> TrialRecord:
    """A trial's record from its folders: `done` when its newest complete checkpoint is its
    last step, `stopped` when the scheduler ended it before (its metrics are then those of
    its newest complete checkpoint, the model it leaves), `error` when the newest attempt
    failed, `incomplete` otherwise (interrupted). With population-based training, the values
    are those it trained with last, and `clones` says whom it cloned and when."""
    record = _read_trial(folders)
    attempts = [a for folder in folders for a in read_attempts(folder)]
    record.clones = [
        f"{a['clone']['from']}@{a['clone']['step']}" for a in attempts if a.get("clone")
    ]
    cell = (attempts[-1].get("cell") or {}) if attempts else {}
    record.values = dict((cell.get("config") or {}).get("values") or {})
    return record


def _read_trial(folders: list[Path]) -> TrialRecord:
    checkpoints = complete_checkpoints(folders)
    latest = checkpoints[-1] if checkpoints else None
    path = latest.parent if latest is not None else folders[-1]
    metrics = _latest_metrics(path, latest)
    attempts = sum(len(read_attempts(f)) for f in folders)
    newest = (read_attempts(folders[-1]) or [{}])[-1]
    where = {"host": newest.get("host"), "node_id": newest.get("node_id")}
    if latest is not None and is_final(latest):
        found = marker(latest) or {}
        saved = found["saved_at"]
        return TrialRecord(path, "done", metrics, checkpoints, None, attempts, saved, None, where)
    stop = read_stop(folders)
    if stop is not None:
        metrics = checkpoint_info(latest) if latest is not None else {}
        return TrialRecord(
            path, "stopped", metrics, checkpoints, None, attempts, stop["at"], stop, where
        )
    error = _error(folders)
    status = "error" if error is not None else "incomplete"
    return TrialRecord(path, status, metrics, checkpoints, error, attempts, where=where)


def _latest_metrics(folder: Path, checkpoint: Path | None) -> dict:
    """The newest metrics: the checkpoint's, or a later line of Tune's `result.json`."""
    metrics = checkpoint_info(checkpoint) if checkpoint is not None else {}
    result = _last_result(folder)
    if result.get("step") is not None and result["step"] > metrics.get("step", -1):
        return result
    return metrics


def _last_result(folder: Path) -> dict:
    try:
        lines = (folder / "result.json").read_text().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def _error(folders: list[Path]) -> str | None:
    """The last line of the error Tune recorded for the newest attempt; None when that attempt
    did not fail (an error an attempt was retried after is not the trial's outcome)."""
    newest = folders[-1]
    text_file, pickled = newest / "error.txt", newest / "error.pkl"
    if not text_file.is_file():
        return (
            f"the trial failed; its error was not saved as text ({pickled})"
            if (pickled.is_file())
            else None
        )
    text = text_file.read_text(errors="replace")
    failures = text.count("Failure # ")
    if failures and failures < len(read_attempts(newest)):
        return None
    return _last_line(text) or f"the trial failed; its error file is empty ({text_file})"


def _last_line(text: str) -> str | None:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else None
