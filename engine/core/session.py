"""The Ray session a run uses, and the Ray output raysoup hides behind its own progress.

Ray is imported inside these functions: modules that import this one (the CLI's commands)
should not pay for Ray before they need it.
"""

from __future__ import annotations

import contextlib
import logging
import os

AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"

# raysoup shows its own progress; Ray's per-stage banners and snapshot advice would bury it.
QUIET_RAY = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def quiet_ray() -> None:
    """Turn off Ray's own progress bars, banners and info logs in this process."""
    for name, value in QUIET_RAY.items():
        os.environ.setdefault(name, value)
    for logger in ("ray.data", "ray.tune", "ray.train"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


@contextlib.contextmanager
def ray_session():
    """Use the Ray the caller started, the cluster in RAY_ADDRESS, or a new local one."""
    import ray

    quiet_ray()
    if ray.is_initialized():
        yield
        return
    if not os.environ.get("RAY_ADDRESS"):
        # A new local cluster keeps Ray's default, token authentication (the token is in
        # ~/.ray/auth_token); Ray's warning that it chose that mode is not for raysoup's users.
        logging.getLogger(AUTH_LOGGER).setLevel(logging.ERROR)
    ray.init(
        address=os.environ.get("RAY_ADDRESS") or None,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
    )
    try:
        yield
    finally:
        ray.shutdown()
