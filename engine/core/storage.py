"""Run directories on object storage (`s3://`, `gs://`), through pyarrow's file
systems with the credentials of the usual environment (`AWS_*` variables, `~/.aws`, instance
roles; raysoup never reads or writes a key itself).

The run directory is the folder on storage. Every process works on a copy of it on its own
node, at the same place on every node: `<cache>/<scheme>/<bucket>/<prefix>/<sweep>`, under
`RAYSOUP_CACHE` (default `~/.cache/raysoup`). Copies and storage are kept in step by:

- the driver, which `pull`s when it opens the run directory (everything but the weights of
  checkpoints and merged models, which stay on storage until a process reads them) and `push`es
  what it writes itself after each stage and during training;
- trials and merge tasks, which `upload` each checkpoint or merged model they make, every file
  first and the one that says it is complete last: a folder on storage without that file is
  partial, and is replaced by the next attempt;
- any process about to read weights, which `fetch`es their folder first.

Folders whose weights stayed on storage list them in `.remote-files.json` (`size` reads it),
so a checkpoint pulled without its weights still counts as complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from engine.core.errors import RunError
from sweeps import SweepError

CACHE_ENV = "RAYSOUP_CACHE"
SCHEMES = ("s3", "gs", "gcs")  # buckets whose objects pyarrow names `<bucket>/<key>`
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")
REMOTE_FILES = ".remote-files.json"
FETCHED = ".fetched.json"  # in a folder: the weights `fetched` brought into it
LIMIT_ENV = "RAYSOUP_CACHE_LIMIT"
SYNC_STATE = ".raysoup-sync.json"


def is_remote(location: str | Path) -> bool:
    return "://" in str(location) and not str(location).startswith("file://")


def check_uri(uri: str) -> str:
    """`uri` without a trailing slash; raises `SweepError` for a scheme raysoup cannot use."""
    parsed = urlparse(uri)
    if parsed.scheme not in SCHEMES or not parsed.netloc:
        raise SweepError(
            f"storage: '{uri}' is not a folder raysoup can write to; give a local folder or "
            "s3://bucket/prefix or gs://bucket/prefix"
        )
    return uri.rstrip("/")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/raysoup").expanduser().resolve()


def local_copy(uri: str) -> Path:
    """This node's copy of the run directory at `uri`."""
    parsed = urlparse(uri)
    return cache_root() / parsed.scheme / parsed.netloc / parsed.path.strip("/")


@functools.cache
def _filesystem(scheme: str, bucket: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError and more
        raise RunError(f"storage: cannot open {scheme}://{bucket}: {err}") from err


def shown(path: str | Path | None) -> str | None:
    """A path as a user finds it: the `s3://` or `gs://` URI of a file of a run directory's
    copy, else the path itself."""
    if path is None or (isinstance(path, float) and path != path):  # a missing table cell
        return path
    remote = Remote.of(path)
    return remote.uri if remote else str(path)


def local(location: str) -> str:
    """The inverse of `shown`: this node's copy of an `s3://` or `gs://` location; a path is
    itself. What Tune pickles (its callbacks) holds locations, so that a driver resuming on a
    machine with another cache folder reads its own copy."""
    return str(local_copy(location)) if is_remote(location) else location


def size(path: Path) -> int | None:
    """A file's size, here or only on storage (its folder's `.remote-files.json` lists it, as a
    pull leaves weights); None when it is in neither."""
    try:
        return path.stat().st_size
    except OSError:
        pass
    try:
        listed = json.loads((path.parent / REMOTE_FILES).read_text())
    except (OSError, ValueError):
        return None
    found = listed.get(path.name)
    return found if isinstance(found, int) else None


@dataclass(frozen=True)
class Remote:
    """A folder of a run directory on storage and its copy on this node (`root`): the object
    `<bucket>/<key>` is the file `<cache>/<scheme>/<bucket>/<key>` on every node."""

    root: Path
    scheme: str
    bucket: str
    base: str

    @classmethod
    def of(cls, path: str | Path) -> Remote | None:
        """The storage behind `path` when it is inside the cache; else None (a local run)."""
        path = Path(path)
        try:
            parts = path.relative_to(cache_root()).parts
        except ValueError:
            return None
        if len(parts) < 2 or parts[0] not in SCHEMES:
            return None
        return cls(path, parts[0], parts[1], "/".join(parts[1:]))

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.base}"

    @property
    def fs(self):
        return _filesystem(self.scheme, self.bucket)

    def key(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def local(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def listing(self, under: str = "") -> dict[str, tuple[int, float]]:
        """Every file under `under` on storage: relative path -> (size, modified time)."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.key(under), recursive=True, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as err:
            raise RunError(f"storage: cannot list {self.uri}/{under}: {err}") from err
        found = {}
        for info in infos:
            if info.type == pafs.FileType.File:
                mtime = info.mtime.timestamp() if info.mtime else 0.0
                found[info.path[len(self.base) + 1 :]] = (info.size, mtime)
        return found

    def download(self, rel: str) -> None:
        """One file into this node's copy, written under a temporary name and renamed."""
        target = self.local(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.down{os.getpid()}")
        try:
            with self.fs.open_input_stream(self.key(rel)) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 8 << 20)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def upload(self, rel: str) -> None:
        """One file of this node's copy onto storage (an object is written whole or not at all)."""
        with open(self.local(rel), "rb") as src, self.fs.open_output_stream(self.key(rel)) as out:
            shutil.copyfileobj(src, out, 8 << 20)


# -- what trials, merges and evaluation call, with paths of the run directory's copy -----------


def fetch(path: str | Path) -> None:
    """Make the folder (or file) `path` whole on this node when it is on storage (`fetched`,
    without holding it afterwards). Nothing for a local path."""
    with fetched(path):
        pass


@contextlib.contextmanager
def fetched(*paths: str | Path | None) -> Iterator[None]:
    """Make each folder (or file) of `paths` whole on this node when it is on storage, and
    hold them while the caller reads them: each file missing here, or of another size, is
    downloaded; processes on one node share the copy, so each folder's lock keeps two of them
    from fetching it at once, and a cache over its limit (`RAYSOUP_CACHE_LIMIT`) evicts other
    fetched weights, never held ones. Local paths and None are passed over."""
    with contextlib.ExitStack() as stack:
        for path in dict.fromkeys(str(p) for p in paths if p):  # each once: a lock per folder
            remote = Remote.of(path)
            if remote is None:
                continue
            # Shared while it is read (by any number of processes; eviction skips it), and
            # exclusive only while files are missing and downloaded: a complete folder that
            # other processes hold is never waited for.
            fd = stack.enter_context(_lock(remote.root))
            fcntl.flock(fd, fcntl.LOCK_SH)
            if _missing(remote):
                fcntl.flock(fd, fcntl.LOCK_EX)
                _fetch(remote)
                fcntl.flock(fd, fcntl.LOCK_SH)
            if remote.root.is_dir():
                for marker in remote.root.rglob(FETCHED):
                    marker.touch()  # used now: the last to be evicted
        yield


def _missing(remote: Remote) -> dict[str, int]:
    """The files of `remote` missing here (or of another size): name -> size on storage."""
    listed = remote.listing() or {"": (remote.fs.get_file_info(remote.base).size, 0.0)}
    return {
        rel: bytes_
        for rel, (bytes_, _) in listed.items()
        if bytes_ is not None
        and not (remote.local(rel).is_file() and remote.local(rel).stat().st_size == bytes_)
    }


def _fetch(remote: Remote) -> None:
    missing = _missing(remote)  # again: another process may have fetched them meanwhile
    wanted = list(missing)
    weights = {rel: bytes_ for rel, bytes_ in missing.items() if _lazy(remote.local(rel))}
    _make_room(sum(weights.values()), remote.root)
    _each(remote.download, wanted)
    if remote.root.is_dir():
        for stale in remote.root.rglob(REMOTE_FILES):
            stale.unlink(missing_ok=True)
    _note_fetched(remote, weights)


# -- the cache's size limit ------------------------------------------------------------------


def cache_limit() -> int | None:
    """`RAYSOUP_CACHE_LIMIT` in bytes (`500GB`, `20 GiB`, `1000000`); None when unset."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?", text, re.IGNORECASE)
    if not match:
        raise RunError(
            f"{LIMIT_ENV}={text!r} is not a size; give bytes, or a number with KB, MB, GB or TB"
        )
    number, unit, binary = match.groups()
    scale = (1024 if binary else 1000) ** "_KMGT".index(unit.upper() or "_")
    return int(float(number) * scale)


def _note_fetched(remote: Remote, weights: dict[str, int]) -> None:
    """Record in each folder the weights fetched into it (`.fetched.json`, touched at each
    use): what eviction may delete again, least recently used first."""
    by_folder: dict[Path, dict[str, int]] = {}
    for rel, bytes_ in weights.items():
        path = remote.local(rel)
        by_folder.setdefault(path.parent, {})[path.name] = bytes_
    for folder, names in by_folder.items():
        marker = folder / FETCHED
        with contextlib.suppress(OSError, ValueError):
            names = {**json.loads(marker.read_text()), **names}
        marker.write_text(json.dumps(names))


def _make_room(needed: int, keep: Path) -> None:
    """Evict fetched weights, least recently used first, until `needed` more bytes fit under
    the cache's limit. A folder another process holds (`fetched`) is passed over; weights
    evicted are listed in `.remote-files.json`, so their checkpoint still counts as complete and
    the next `fetched` brings them back. When nothing more can go, the limit is exceeded and a
    warning says so."""
    limit = cache_limit()
    if limit is None:
        return
    found = []
    for marker in cache_root().rglob(FETCHED):
        try:
            names = json.loads(marker.read_text())
            held = sum(size for n, size in names.items() if (marker.parent / n).is_file())
            found.append((marker.stat().st_mtime, marker.parent, names, held))
        except (OSError, ValueError):
            continue
    total = sum(entry[3] for entry in found)
    for _, folder, names, held in sorted(found, key=lambda entry: entry[0]):
        if total + needed <= limit:
            return
        if folder == keep or keep in folder.parents:
            continue
        with _lock(folder) as fd:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being read
            listed = folder / REMOTE_FILES
            with contextlib.suppress(OSError, ValueError):
                names = {**json.loads(listed.read_text()), **names}
            listed.write_text(json.dumps(names))
            for name in names:
                (folder / name).unlink(missing_ok=True)
            (folder / FETCHED).unlink(missing_ok=True)
        total -= held
    if total + needed > limit:
        logging.getLogger("raysoup").warning(
            "%s: the cache holds %d bytes of fetched weights and needs %d more, over its "
            "limit of %d (%s): what is over it is in use",
            cache_root(),
            total,
            needed,
            limit,
            LIMIT_ENV,
        )


def upload(path: str | Path, last: str | None = None) -> int:
    """Put the folder (or file) `path` on storage in place of what is there: what an earlier
    attempt left is deleted, then every file is written, `last` (the file that says the folder
    is complete) after all the others. Returns the bytes written; 0 for a local path."""
    remote = Remote.of(path)
    if remote is None:
        return 0
    root = remote.root
    if root.is_file():
        remote.upload("")
        return root.stat().st_size
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    files = [f for f in files if _mine(f)]
    delete(root)
    _each(remote.upload, [f for f in files if f != last])
    if last in files:
        remote.upload(last)
    return sum((root / f).stat().st_size for f in files)


def delete(path: str | Path) -> None:
    """The folder (or file) `path` on storage, and everything under it; nothing for a local path."""
    import pyarrow.fs as pafs

    remote = Remote.of(path)
    if remote is None:
        return
    info = remote.fs.get_file_info(remote.base)
    if info.type == pafs.FileType.Directory:
        remote.fs.delete_dir(remote.base)
    elif info.type == pafs.FileType.File:
        remote.fs.delete_file(remote.base)


def pull_missing(path: str | Path) -> None:
    """Every file under the folder `path` that this node lacks, weights of checkpoints and merges
    left on storage; never replaces a file that is here (a process on this node may be writing
    it). Nothing for a local path."""
    remote = Remote.of(path)
    if remote is not None:
        _pull(remote, remote.listing(), lambda rel: not (remote.root / rel).exists())


# -- the driver's two directions --------------------------------------------------------------


def pull(remote: Remote, under: str = "") -> int:
    """Bring the driver's copy in step with storage under `under`; returns files downloaded.

    A file is downloaded when it is missing here, or when storage holds another version than
    the one this copy last pulled or pushed while the copy has not changed since (what the
    driver changed is pushed, not overwritten). A file this copy pulled that is gone from
    storage (a checkpoint a trial on another node pruned) is deleted here too. Weights under
    `tune/` and `merges/` stay on storage (`fetch` brings them).
    """
    state = _State.read(remote.root)
    listed = remote.listing(under)

    def wanted(rel: str) -> bool:
        here = _stat(remote.root / rel)
        if here is None:
            return True
        known = state.files.get(rel)
        if not known or here != known["local"]:
            return False  # this node wrote it (a trial here), or the driver changed it since
        return known["remote"] is None or listed[rel] != tuple(known["remote"])

    got = _pull(remote, listed, wanted, state)
    for rel, known in list(state.files.items()):
        if rel.startswith(under) and rel not in listed:
            if _stat(remote.root / rel) == known["local"]:
                (remote.root / rel).unlink(missing_ok=True)
            del state.files[rel]
    state.write()
    return got


def push(remote: Remote, owned, order=lambda rel: 0) -> int:
    """Upload what the driver wrote: each file `owned(rel)` says is the driver's that changed
    since this copy last pushed or pulled it, by `order(rel)` (lowest first). Returns the files
    uploaded."""
    state = _State.read(remote.root)
    sent = 0
    paths = sorted(remote.root.rglob("*"))
    paths.sort(key=lambda p: order(str(p.relative_to(remote.root))))
    for path in paths:
        rel = str(path.relative_to(remote.root))
        if not path.is_file() or not _mine(rel) or not owned(rel):
            continue
        here = _stat(path)
        known = state.files.get(rel)
        if known and known["local"] == here:
            continue
        remote.upload(rel)
        state.files[rel] = {"local": here, "remote": None}
        sent += 1
    if sent:
        listed = remote.listing()
        for rel, known in state.files.items():
            if known["remote"] is None and rel in listed:
                known["remote"] = list(listed[rel])
    state.write()
    return sent


def _pull(remote: Remote, listed: dict, wanted, state: _State | None = None) -> int:
    chosen: list[str] = []
    skipped: dict[Path, dict[str, int]] = {}
    for rel, (bytes_, _) in sorted(listed.items()):
        if not _mine(rel):
            continue
        if _lazy(remote.root / rel):
            if not (remote.root / rel).exists():
                skipped.setdefault((remote.root / rel).parent, {})[Path(rel).name] = bytes_
            continue
        if wanted(rel):
            chosen.append(rel)
    _each(remote.download, chosen)
    for rel in chosen:
        if state is not None:
            state.files[rel] = {"local": _stat(remote.root / rel), "remote": list(listed[rel])}
    for folder, names in skipped.items():
        if names:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / REMOTE_FILES
            with contextlib.suppress(OSError, ValueError):
                names = {**json.loads(path.read_text()), **names}
            path.write_text(json.dumps(names))
    return len(chosen)


def _each(move, names: list[str]) -> None:
    """`move` (an upload or a download) of every name, several at once: object storage answers
    each request in tens of milliseconds, and a checkpoint is many files."""
    if len(names) < 2:
        for name in names:
            move(name)
        return
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        list(pool.map(move, names))  # list(): the first error is raised here


def _mine(rel: str) -> bool:
    """Not a file raysoup keeps to itself: hidden files and folders of a run directory (locks,
    staging, partial checkpoints, sync state) are never uploaded nor pulled."""
    return not any(part.startswith(".") for part in rel.split("/"))


def _lazy(path: Path) -> bool:
    """Weights of a checkpoint or a merged model: left on storage until `fetch` brings them."""
    return path.name.endswith(WEIGHTS) and any(
        part.startswith("checkpoint_") or part == "merges" for part in path.parts
    )


def _stat(path: Path) -> list | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


@dataclass
class _State:
    """What the driver's copy last pulled or pushed: per file, its local (size, mtime) and the
    version on storage (size, modified time)."""

    root: Path
    files: dict

    @classmethod
    def read(cls, root: Path) -> _State:
        try:
            return cls(root, json.loads((root / SYNC_STATE).read_text()))
        except (OSError, ValueError):
            return cls(root, {})

    def write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{SYNC_STATE}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(self.files))
        os.replace(tmp, self.root / SYNC_STATE)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[int]:
    """The open lock file of a folder of the copy (`flock` it); closing it releases the lock."""
    lock = path.parent / f".{path.name}.fetch.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


class Every:
    """True at most once per `seconds` (the driver's pushes during training)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.last = seconds, float("-inf")  # true at the first call

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True
