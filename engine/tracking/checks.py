"""Checks of `tracking:` before a sweep starts: an online W&B run needs a key to log in with."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse

from sweeps import Sweep


def tracking_problems(sweep: Sweep) -> list[str]:
    cfg = sweep.tracking.wandb
    if cfg is None or cfg.mode != "online" or has_key():
        return []
    return [
        "tracking.wandb.mode: 'online' needs a W&B API key, and none was found (neither "
        "WANDB_API_KEY nor a `wandb login` entry in ~/.netrc); log in, or use mode 'offline' "
        "and `wandb sync` the run directory's wandb/ folder later"
    ]


def has_key() -> bool:
    """Whether W&B will find a key: `WANDB_API_KEY`, or the host's entry in the netrc file."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
