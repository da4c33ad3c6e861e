"""The Ray session a run uses, and the Ray output raysoup hides behind its own progress.

Ray is imported inside these functions: modules that import this one (the CLI's commands)
should not pay for Ray before they need it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

from engine.core.errors import RunError

AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"

# raysoup shows its own progress; Ray's per-stage banners and snapshot advice would bury it.
QUIET_RAY = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


# Tune logs a trial's failure and a failed copy of its state with a traceback; raysoup retries
# the trial and says what failed in its own words, so these are cut to their first line.
CONCISE = (
    "ray.tune.execution.tune_controller",
    "ray.tune.execution.experiment_state",
    "ray.tune.tune",
)


class OneLine(logging.Filter):
    """Keeps a log record's first line and drops its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        lines = record.getMessage().split("\nTraceback")[0].strip().splitlines()
        record.msg, record.args = (lines[0] if lines else ""), None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def quiet_ray() -> None:
    """Turn off Ray's own progress bars, banners and info logs in this process, and cut
    Tune's error logs to one line."""
    for name, value in QUIET_RAY.items():
        os.environ.setdefault(name, value)
    for logger in ("ray.data", "ray.tune", "ray.train"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    for name in CONCISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLine) for f in logger.filters):
            logger.addFilter(OneLine())
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


@contextlib.contextmanager
def ray_session():
    """Use the Ray the caller started, the cluster in RAY_ADDRESS, or a new local one.

    Yields the session folder of a local cluster it started (None otherwise), which
    `leftover_processes` can find again if this process is killed before it stops it.
    """
    import ray

    quiet_ray()
    if ray.is_initialized():
        yield None
        return
    if not os.environ.get("RAY_ADDRESS"):
        # A new local cluster keeps Ray's default, token authentication (the token is in
        # ~/.ray/auth_token); Ray's warning that it chose that mode is not for raysoup's users.
        logging.getLogger(AUTH_LOGGER).setLevel(logging.ERROR)
    address = os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(
            address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING"
        )
    except ConnectionError as err:
        if address is None:
            raise
        raise RunError(
            f"cannot reach the Ray cluster at {address} ({str(err).splitlines()[0]}); if it "
            "uses token authentication, set RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN, "
            "or RAY_AUTH_TOKEN_PATH to its file) before Python starts (raysoup's commands do "
            "so when they find a token)"
        ) from None
    started = _started_here()
    try:
        yield started
    finally:
        ray.shutdown()


def auth_token() -> tuple[str | None, str | None]:
    """The Ray token on this machine and where it came from, looked for as Ray does:
    `RAY_AUTH_TOKEN`, the file in `RAY_AUTH_TOKEN_PATH`, then `~/.ray/auth_token`."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    candidates = []
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        candidates.append((Path(os.environ["RAY_AUTH_TOKEN_PATH"]), "RAY_AUTH_TOKEN_PATH"))
    candidates.append((Path.home() / ".ray" / "auth_token", "~/.ray/auth_token"))
    for path, source in candidates:
        try:
            token = path.read_text().strip()
        except OSError:
            continue
        if token:
            return token, source
    return None, None


def use_cluster(address: str | None = None) -> None:
    """Make this process's Ray join the cluster at `address` (else `RAY_ADDRESS`'s), sending
    this machine's token when it has one.

    Ray's client sends a token only in token mode, and reads the mode once, when Ray is
    imported: without it, joining a cluster with token authentication (Ray 2.60's default)
    fails as "Failed to connect". A client in token mode joins a cluster without
    authentication as well, so the mode is set whenever a token is found. Call it before
    Ray is imported.
    """
    if address:
        os.environ["RAY_ADDRESS"] = address
    if os.environ.get("RAY_ADDRESS") and not os.environ.get("RAY_AUTH_MODE"):
        if auth_token()[0] is not None:
            os.environ["RAY_AUTH_MODE"] = "token"


def _started_here() -> str | None:
    """The session folder of the cluster `ray.init` just started in this process; None when it
    joined one that was already running."""
    import ray

    node = ray._private.worker._global_node
    return node.get_session_dir_path() if node is not None and node.is_head() else None


def leftover_processes(session_dir: str) -> list[int]:
    """Processes a killed driver's local Ray cluster left behind: adopted by init (their
    parent is gone) and holding files open in that cluster's session folder. (Ray's agents
    wait a minute or two for a dead cluster's GCS before they exit on their own.)"""
    prefix = session_dir.rstrip("/") + "/"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != 1:  # the parent pid
                continue
            links = (
                os.readlink(f"/proc/{entry.name}/fd/{fd}")
                for fd in os.listdir(f"/proc/{entry.name}/fd")
            )
            if any(link.startswith(prefix) for link in links):
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone, or not ours to read
    return found


def stop_leftovers(session_dir: str) -> int:
    """Kill what `leftover_processes` finds (they serve a cluster that is gone); how many."""
    pids = leftover_processes(session_dir)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
