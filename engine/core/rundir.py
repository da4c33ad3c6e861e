"""The run directory: the contract between stages, the CLI and users.

<storage>/<sweep name>/
  sweep.yaml        resolved definition
  data/             manifest.json, <task>/train/*.parquet, <task>/eval/*.parquet
  model/            the base model, when it is built rather than found (preset tiny-random)
  tune/             the Ray Tune experiment (trial folders, checkpoints)
  trials.parquet    one row per trial
  merges/           one model folder per merge candidate, with recipe.yaml
  merges.parquet    one row per merge job: ingredients, status
  evals.parquet     one row per (candidate, eval set, metric)
  leaderboard.md    trials and merges ranked together
  report.html       the leaderboard with plots
  scaling.json      scaling-law fit of a data-scale sweep; plots/scaling.png draws it
  plots/            the report's plots as PNG files
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.core import storage
from engine.core.errors import RunError
from sweeps import Sweep, SweepError, dump_sweep, load_sweep

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory. On object storage (`uri`), `root` is this node's copy,
    at the same place on every node (`engine/core/storage.py`)."""

    root: Path
    uri: str | None = None

    @classmethod
    def at(cls, location: str | Path) -> RunDir:
        """The run directory at a local folder or an `s3://`, `gs://` or `abfs://` URI (a path
        inside the cache stands for the URI it copies)."""
        text = str(location)
        if storage.is_remote(text):
            uri = storage.check_uri(text)
            return cls(storage.local_copy(uri), uri)
        root = Path(text).expanduser().resolve()
        remote = storage.Remote.of(root)
        return cls(root, remote.uri) if remote else cls(root)

    @classmethod
    def for_sweep(cls, sweep: Sweep, storage_: str | None = None) -> RunDir:
        base = storage_ or sweep.storage
        if storage.is_remote(base):
            return cls.at(f"{storage.check_uri(base)}/{sweep.name}")
        return cls(Path(base).expanduser().resolve() / sweep.name)

    def __reduce__(self):
        # Rebuilt from its location: a copy unpickled by a driver on another machine (Tune
        # restores its callbacks from the experiment's state) points into that one's cache.
        return (RunDir.at, (self.location,))

    @property
    def location(self) -> str:
        """Where the run directory is, as a user names it (`raysoup resume <location>`)."""
        return self.uri or str(self.root)

    def pull(self, under: str = "") -> None:
        """On object storage: bring this copy in step with the run directory (`storage.pull`)."""
        if self.uri:
            storage.pull(storage.Remote.of(self.root), under)

    def push(self) -> None:
        """On object storage: upload what the driver wrote since the last push."""
        if self.uri:
            storage.push(storage.Remote.of(self.root), driver_writes, tune_state_first)

    @property
    def lock_file(self) -> Path:
        return self.root / ".raysoup.lock"

    @property
    def sweep_file(self) -> Path:
        return self.root / "sweep.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.json"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def worker_groups(self) -> Path:
        """Ray Train's own folders of the trials that train on worker groups."""
        return self.root / "worker_groups"

    @property
    def trials(self) -> Path:
        return self.root / "trials.parquet"

    @property
    def leaderboard(self) -> Path:
        return self.root / "leaderboard.md"

    @property
    def merges(self) -> Path:
        return self.root / "merges"

    @property
    def merges_table(self) -> Path:
        return self.root / "merges.parquet"

    @property
    def evals(self) -> Path:
        return self.root / "evals.parquet"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def scaling(self) -> Path:
        return self.root / "scaling.json"

    @property
    def scaling_plot(self) -> Path:
        return self.root / "plots" / "scaling.png"

    def load_sweep(self) -> Sweep:
        if not self.sweep_file.is_file():
            raise SweepError(f"{self.location}: not a run directory (no sweep.yaml)")
        return load_sweep(self.sweep_file)

    def claim(self, sweep: Sweep) -> None:
        """Write `sweep.yaml`, refusing a run directory that holds a different sweep."""
        text = dump_sweep(sweep)
        if self.sweep_file.is_file() and self.sweep_file.read_text() != text:
            raise SweepError(
                f"{self.root} already holds a different sweep named '{sweep.name}'; resume it with "
                f"`raysoup resume {self.root}`, or rename the sweep or pick another --storage"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.sweep_file, text)

    @contextlib.contextmanager
    def lock(self) -> Iterator[Held]:
        """Hold the run directory for this driver: one driver per run directory.

        The lock is `.raysoup.lock`, locked with `flock` while the driver runs and holding its
        host and pid; a driver that died (even by SIGKILL) releases it, and the next one takes
        it over (`Held.previous` says what it left). Raises `RunError` naming the driver that
        holds it.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunError(self._held_message(_read_lock(fd))) from None
            held = Held(fd, _read_lock(fd), {})
            held.note(host=socket.gethostname(), pid=os.getpid(), since=time.time())
            try:
                yield held
            finally:
                _write_lock(fd, None)
        finally:
            os.close(fd)  # closing releases the flock

    def _held_message(self, holder: dict | None) -> str:
        who = "another raysoup"
        if holder:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
            who += f" (pid {holder.get('pid')} on {holder.get('host')}, since {since})"
        return (
            f"{self.root} is in use by {who}; one driver at a time runs a sweep. Wait for it "
            f"to end (or stop it), then `raysoup resume {self.root}`"
        )


@dataclass
class Held:
    """The run directory's lock, held by this driver: what a driver that is gone left in it
    (`previous`, None after a clean end), and `note` to record more (the Ray session a local
    cluster runs in, so the next driver can stop what a kill left of it)."""

    fd: int
    previous: dict | None
    mine: dict

    def note(self, **fields) -> None:
        self.mine.update(fields)
        _write_lock(self.fd, self.mine)


def _read_lock(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _write_lock(fd: int, holder: dict | None) -> None:
    # The file is kept (never unlinked): another driver may be opening it to lock it.
    os.ftruncate(fd, 0)
    if holder is not None:
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)


def tune_state_first(rel: str) -> int:
    """The order of the driver's uploads: Tune's `tuner.pkl`, then its trials
    (`experiment_state-*`), then the rest, its grid's state (`basic-variant-state-*`) among
    them: a grid behind its trials only makes trials again, which return at once (finished)
    or continue from their checkpoints. A driver killed between two uploads can still leave a
    set Tune cannot restore (trials but no grid yet); a resume then rebuilds the experiment from
    the trials' folders (`engine.train.experiment.start_mode`)."""
    if rel == "tune/tuner.pkl":
        return 0
    return 1 if rel.startswith("tune/experiment_state-") else 2


def driver_writes(rel: str) -> bool:
    """Whether the driver writes this file of the run directory: all but checkpoints and
    `attempts.jsonl` (each trial uploads its own) and `merges/` (each merge task its own)."""
    parts = rel.split("/")
    if parts[0] == "merges":
        return False
    trial_owned = len(parts) > 2 and (
        parts[2].startswith("checkpoint_") or parts[2] == "attempts.jsonl"
    )
    return not (parts[0] == "tune" and trial_owned)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not also keep half a file
        raise


def write_table(table: pd.DataFrame, path: Path) -> None:
    """A table as Parquet, written atomically (its folder made if needed)."""
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())
