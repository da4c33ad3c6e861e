"""Sweeps as Ray jobs: `raysoup submit` and `raysoup jobs`, through Ray's Jobs API.

A submitted job runs `raysoup run <sweep file> --storage <folder> --stage-inputs` on the
cluster's head node, in a copy of a working directory sent with it (the project folder: the
sweep file, its data files, any code it names). Everything that is not needed there is left out
(run directories, virtual environments, checkpoints, caches), and a folder larger than Ray's
limit for a job's working directory is refused with the largest files named, before anything is
uploaded.

Ray's token authentication: a cluster started by Ray 2.60 wants a token on every request, and
Ray's client sends it only when `RAY_AUTH_MODE=token` is set on the client too. raysoup looks
for the token where Ray keeps it (`RAY_AUTH_TOKEN`, the file in `RAY_AUTH_TOKEN_PATH`, then
`~/.ray/auth_token`) and sends it whenever it finds one; a cluster without authentication
ignores it. The token is sent in a request header, never written into the job.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import re
import secrets
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.core import storage as storage_
from engine.core.errors import RunError
from engine.core.session import auth_token
from engine.submit.paths import local_paths
from sweeps import Sweep, SweepError, load_sweep
from sweeps.config import SECRET_NAME

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Ray's documentation keeps a job's local working directory to 100 MiB (the hard cap is the
# GCS's gRPC message size): data that big belongs on storage the cluster reads.
SIZE_LIMIT = 100 * 2**20
# Left out of every working directory (gitignore patterns, as Ray's `excludes` reads them).
EXCLUDES = [
    ".git/",
    ".venv/",
    "venv/",
    "__pycache__/",
    "*.egg-info/",
    ".*_cache/",
    ".ipynb_checkpoints/",
    "runs/",
    "wandb/",
    "checkpoint_*/",
]
DONE = ("SUCCEEDED", "FAILED", "STOPPED")
NO_AGENT = "No available agent to submit job"
AGENT_WAIT_S = 60.0
# Ray's client logs "uploading package" and "WebSocket closed" at INFO; raysoup says what it
# sends and how the job ended itself.
SDK_LOGGERS = (
    "ray.dashboard.modules.dashboard_sdk",
    "ray.dashboard.modules.job.sdk",
    "ray._private.runtime_env.packaging",
)


class JobError(RunError):
    """The cluster cannot be reached, refuses the request, or has no such job."""


@dataclass
class Package:
    """What a job takes to the cluster: a working directory, less what is left out."""

    working_dir: Path
    sweep_path: str  # the sweep file, relative to the working directory
    excludes: list[str]
    size: int  # bytes sent (before compression)
    files: int


@dataclass
class Submission:
    job_id: str
    address: str
    run_dir: str  # where the job writes the run directory, as the cluster sees it
    package: Package


# -- what is sent ---------------------------------------------------------------------------


def package(
    sweep_file: Path,
    sweep: Sweep,
    working_dir: Path,
    *,
    shared: list[Path] | None = None,
    excludes: list[str] | None = None,
) -> Package:
    """Check that the sweep can run from a copy of `working_dir` on a cluster, and measure
    what would be sent.

    Raises `SweepError` when the sweep file is outside `working_dir`, when a file the sweep
    names is on this machine but outside `working_dir` and outside every `shared` folder (one
    that every node mounts at the same path), or when what is sent exceeds `SIZE_LIMIT`.
    """
    root = Path(working_dir).resolve()
    sweep_file = Path(sweep_file)
    if not root.is_dir():
        raise SweepError(f"--working-dir: {working_dir} is not a folder")
    if not sweep_file.resolve().is_relative_to(root):
        raise SweepError(
            f"{sweep_file}: outside the working directory {root}, which is what the job takes to "
            "the cluster; run from the project's folder or give it with --working-dir"
        )
    _check_paths(sweep_file, sweep, root, [Path(s).resolve() for s in shared or []])
    patterns = EXCLUDES + _storage_excludes(sweep.storage, root) + list(excludes or [])
    size, count, largest = _measure(root, patterns)
    if size > SIZE_LIMIT:
        named = ", ".join(f"{path} ({_mib(n)})" for n, path in largest)
        raise SweepError(
            f"--working-dir: {root} holds {_mib(size)} to send, more than the {_mib(SIZE_LIMIT)}"
            f" Ray takes as a job's working directory; the largest files: {named}. Put large "
            "data on storage every node reads (name it by an absolute path and pass that "
            "folder with --shared), or leave files out with --exclude PATTERN"
        )
    relative = sweep_file.resolve().relative_to(root).as_posix()
    return Package(root, relative, patterns, size, count)


def _check_paths(sweep_file: Path, sweep: Sweep, root: Path, shared: list[Path]) -> None:
    problems = []
    for found in local_paths(sweep_file, sweep):
        # A relative path is followed from the job's copy of the working directory, so only
        # an absolute one can name a shared folder.
        if not found.relative and any(found.path.is_relative_to(f) for f in shared):
            continue
        if found.relative and found.path.is_relative_to(root):
            if not found.path.exists():
                problems.append(f"{found.field}: {found.written!r}: no such file ({found.path})")
            continue
        if found.relative:
            problems.append(
                f"{found.field}: {found.written!r} is {found.path}, outside the working "
                f"directory {root}, so the job will not have it; move it inside, or put it on "
                "storage every node reads, name it by its absolute path and pass that folder "
                "with --shared"
            )
        else:
            where = (
                "inside the working directory, but the job's copy of it is elsewhere; write "
                "it relative to the sweep file"
                if found.path.is_relative_to(root)
                else "a file on this machine, which the cluster's nodes cannot read unless it "
                "is on storage they all mount (then pass that folder with --shared); or move "
                "it into the working directory and write it relative to the sweep file"
            )
            problems.append(f"{found.field}: {found.written} is {where}")
    if problems:
        raise SweepError(f"{sweep_file}: cannot be submitted as it is:\n  " + "\n  ".join(problems))


def _storage_excludes(storage: str, root: Path) -> list[str]:
    """The sweep's own storage folder, when it is inside the working directory."""
    if "://" in storage:
        return []
    folder = (root / storage).resolve()
    if folder != root and folder.is_relative_to(root):
        return [f"/{folder.relative_to(root).as_posix()}/"]
    return []


def _measure(root: Path, patterns: list[str]) -> tuple[int, int, list[tuple[int, str]]]:
    """Bytes and files under `root` that `patterns` do not leave out, and the 3 largest."""
    total, count, sizes = 0, 0, []
    for folder, dirs, files in os.walk(root):
        here = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if not _excluded((here / d).as_posix(), patterns, True)]
        for name in files:
            relative = (here / name).as_posix()
            if _excluded(relative, patterns, False):
                continue
            try:
                size = (Path(folder) / name).stat().st_size
            except OSError:
                continue
            total, count = total + size, count + 1
            sizes.append((size, relative))
    return total, count, sorted(sizes, reverse=True)[:3]


def _excluded(relative: str, patterns: list[str], is_dir: bool) -> bool:
    """Whether a gitignore-style pattern leaves `relative` out: `name/` matches folders only,
    a leading `/` anchors at the root, anything else matches the last part at any depth."""
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.endswith("/") and not is_dir:
            continue
        body = pattern.rstrip("/")
        if body.startswith("/"):
            if fnmatch.fnmatchcase(relative, body[1:]):
                return True
        elif fnmatch.fnmatchcase(name if "/" not in body else relative, body):
            return True
    return False


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def job_storage(sweep: Sweep, storage: str | None) -> str:
    """The folder the job's run directory goes to: `storage` or the sweep's, absolute.

    Object storage (`s3://`, `gs://`) is taken as it is. Raises `SweepError` for a relative
    folder: the job runs in a temporary copy of the
    working directory, which the cluster deletes, run directory and all.
    """
    value = storage or sweep.storage
    field = "--storage" if storage else "storage"
    if storage_.is_remote(value):
        storage_.check_uri(value)
        return value
    if not Path(value).is_absolute():
        raise SweepError(
            f"{field}: {value!r} is relative: the job runs in a temporary copy of the working "
            "directory on the cluster, and its run directory would go with it; give --storage "
            "an absolute folder that the cluster's nodes share (and that you can read)"
        )
    return value


def runtime_env(
    pack: Package,
    sweep: Sweep,
    *,
    extra: dict | None = None,
    pip: list[str] | None = None,
    image: str | None = None,
) -> dict:
    """The job's runtime environment: the sweep's `submit` section, then `extra` (a
    `--runtime-env` file), then the command line's `pip` packages and `image`, with the working
    directory and its excludes.

    Raises `SweepError` when `extra` sets the working directory, or holds an environment
    variable whose name says it is a secret (Ray keeps the runtime environment in the job's
    record, which the dashboard shows to anyone who can reach it; the sweep's own `submit`
    section is checked when the sweep is loaded).
    """
    env = dict(extra or {})
    if "working_dir" in env:
        raise SweepError(
            "--runtime-env: working_dir: set by raysoup submit (give the folder with "
            "--working-dir); remove it from the file"
        )
    for name in env.get("env_vars") or {}:
        if SECRET_NAME.search(name):
            raise SweepError(
                f"--runtime-env: env_vars.{name}: looks like a secret, and Ray shows a job's "
                "runtime environment on its dashboard; set it in the environment of the "
                "cluster's nodes instead"
            )
    named = sweep.submit
    env["working_dir"] = str(pack.working_dir)
    env["excludes"] = list(env.get("excludes") or []) + pack.excludes
    packages = (named.pip if named else []) + list(env.get("pip") or []) + list(pip or [])
    if packages:
        env["pip"] = packages
    variables = (named.env_vars if named else {}) | dict(env.get("env_vars") or {})
    if variables:
        env["env_vars"] = variables
    image = image or env.get("image_uri") or (named.image if named else None)
    if image:
        env["image_uri"] = image
    return env


def read_runtime_env(path: Path) -> dict:
    """A `--runtime-env` file: a YAML or JSON mapping of Ray runtime environment fields."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise SweepError(f"--runtime-env: {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise SweepError(f"--runtime-env: {path}: not YAML or JSON ({err})") from None
    if not isinstance(data, dict):
        raise SweepError(f"--runtime-env: {path}: expected a mapping of runtime_env fields")
    return data


def entrypoint(pack: Package, storage: str) -> str:
    """`raysoup run` of the sweep file in the job's copy of the working directory; its input
    files are copied into the run directory first (`engine/submit/inputs.py`)."""
    sweep, folder = shlex.quote(pack.sweep_path), shlex.quote(storage)
    return f"raysoup run {sweep} --storage {folder} --stage-inputs"


def job_id(sweep: Sweep) -> str:
    """`raysoup-<sweep>-<UTC time>-<4 hex>`: readable in `raysoup jobs list`, and unique."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", sweep.name)[:40]
    return f"raysoup-{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


# -- the cluster ----------------------------------------------------------------------------


def cluster_address(address: str | None = None) -> str:
    """The Jobs API's address: `address`, else `RAY_API_SERVER_ADDRESS`, else `RAY_ADDRESS`
    (as `ray job` reads them), else the local dashboard."""
    found = (
        address
        or os.environ.get("RAY_API_SERVER_ADDRESS")
        or os.environ.get("RAY_ADDRESS")
        or DEFAULT_ADDRESS
    )
    return found if "://" in found else f"http://{found}"


def client(address: str | None = None):
    """A `JobSubmissionClient` for the cluster, with the token when this machine has one.

    Raises `JobError` when no cluster answers, or when it wants a token that is missing or
    is not its own.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    url = cluster_address(address)
    token, source = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except AuthenticationError:
        if token is None:
            raise JobError(
                f"the Ray cluster at {url} wants a token and this machine has none: set "
                "RAY_AUTH_TOKEN to it, or RAY_AUTH_TOKEN_PATH to a file holding it, or put it "
                "in ~/.ray/auth_token (`ray get-auth-token` on the head node prints it)"
            ) from None
        raise JobError(
            f"the Ray cluster at {url} refused the token from {source}: it is not this "
            "cluster's (`ray get-auth-token` on the head node prints the right one)"
        ) from None
    except (ConnectionError, OSError) as err:
        raise JobError(
            f"no Ray cluster answers at {url} ({type(err).__name__}); start one with "
            "`ray start --head`, or give its dashboard's address with --address or RAY_ADDRESS"
        ) from None
    except RuntimeError as err:  # Ray's client wraps what it cannot connect to
        raise JobError(f"no Ray Jobs API at {url}: {str(err).splitlines()[0]}") from None


def submit(
    sweep_file: Path,
    *,
    address: str | None = None,
    working_dir: Path | None = None,
    storage: str | None = None,
    runtime_env_file: Path | None = None,
    pip: list[str] | None = None,
    image: str | None = None,
    shared: list[Path] | None = None,
    excludes: list[str] | None = None,
) -> Submission:
    """Submit `sweep_file` as a Ray job that runs the sweep on the cluster; its id.

    Everything is checked before anything is sent: the sweep file, the files it names, the
    storage folder, the working directory's size (`SweepError` naming what is wrong).
    """
    sweep_file = Path(sweep_file)
    sweep = load_sweep(sweep_file)
    folder = job_storage(sweep, storage)
    extra = read_runtime_env(runtime_env_file) if runtime_env_file else {}
    more = list(extra.get("excludes") or []) + list(excludes or [])
    pack = package(sweep_file, sweep, Path(working_dir or Path.cwd()), shared=shared, excludes=more)
    rest = {key: value for key, value in extra.items() if key != "excludes"}
    env = runtime_env(pack, sweep, extra=rest, pip=pip, image=image)
    jobs = client(address)
    submission_id = job_id(sweep)
    run_dir = str(Path(folder) / sweep.name)
    metadata = {"raysoup_sweep": sweep.name, "raysoup_run_dir": run_dir}
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            _call(
                jobs.submit_job,
                entrypoint=entrypoint(pack, folder),
                submission_id=submission_id,
                runtime_env=env,
                metadata=metadata,
            )
            break
        except JobError as err:
            # A cluster that has just started takes a few seconds to start the agent that
            # runs jobs; Ray answers "try again later" meanwhile.
            if NO_AGENT not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    return Submission(submission_id, cluster_address(address), run_dir, pack)


def _call(method, *args, **kwargs):
    """A Jobs API call, with Ray's "request failed" errors said as raysoup's."""
    try:
        return method(*args, **kwargs)
    except RuntimeError as err:
        text = str(err)
        if "does not exist" in text or "status code 404" in text:
            job = args[0] if args else kwargs.get("job_id", "")
            raise JobError(
                f"no job {job!r} on this cluster; `raysoup jobs list` shows its jobs"
            ) from None
        raise JobError(text.strip().splitlines()[0] if text.strip() else repr(err)) from None
    except (ConnectionError, OSError) as err:
        raise JobError(f"the cluster stopped answering ({type(err).__name__})") from None


# -- following, listing, stopping -----------------------------------------------------------


def follow(jobs, job: str, out=None) -> Any:
    """Write the job's log to `out` as it comes, until the job ends; its final details.

    Ctrl-C stops following only: the job goes on, and the `KeyboardInterrupt` says how to
    follow it again or stop it.
    """
    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
        return wait(jobs, job)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"stopped following; job {job} goes on: `raysoup jobs logs {job} --follow` follows "
            f"it again, `raysoup jobs stop {job}` stops it"
        ) from None


def details(jobs, job: str) -> Any:
    """The job's details as the cluster has them now."""
    return _call(jobs.get_job_info, job)


def wait(jobs, job: str, timeout: float | None = None) -> Any:
    """The job's details once it has ended (its status can lag its log's end by a moment);
    the details as they are when `timeout` seconds pass first."""
    start = time.monotonic()
    while True:
        info = details(jobs, job)
        if status(info) in DONE or (timeout and time.monotonic() - start > timeout):
            return info
        time.sleep(0.5)


def exit_code(info) -> int:
    """The exit code `raysoup submit --follow` ends with: 0 when the job succeeded, the
    sweep's own exit code when it failed (1: a trial, merge or evaluation failed; 2: the sweep
    was wrong), 1 when it was stopped or failed without one."""
    if status(info) == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if status(info) == "FAILED" and code else 1


def status(info) -> str:
    """A job's status as a word: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    return getattr(info.status, "value", str(info.status))


def list_jobs(jobs) -> list:
    """Every job on the cluster, oldest first."""
    return sorted(_call(jobs.list_jobs), key=lambda info: info.start_time or 0)


def stop(jobs, job: str, timeout: float = 30.0) -> Any:
    """Ask the cluster to stop `job`; its details once stopped (or after `timeout` seconds)."""
    _call(jobs.stop_job, job)
    return wait(jobs, job, timeout=timeout)


def logs(jobs, job: str) -> str:
    return _call(jobs.get_job_logs, job)
