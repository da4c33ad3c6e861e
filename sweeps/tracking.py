"""Experiment tracking: where a sweep's trials, merges and leaderboard are logged (`tracking:`).

Weights & Biases only, for now. Runs are written by the driver alone, `offline` by default into
the run directory's `wandb/` folder (`wandb sync` uploads them later); docs/wandb.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sweeps.base import Strict


class WandbConfig(Strict):
    """Weights & Biases: one run per trial, one per merge and one for the sweep's results."""

    project: str = Field("raysoup", description="W&B project the runs belong to.")
    entity: str | None = Field(None, description="W&B entity (user or team); null: the default.")
    group: str | None = Field(
        None, description="Group of the sweep's runs on the dashboard; null: the sweep's name."
    )
    tags: list[str] = Field(default_factory=list, description="Tags on every run.")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline",
        description="`offline`: runs are written into `<run dir>/wandb/` and uploaded later "
        "with `wandb sync`; `online`: uploaded as they run (needs `WANDB_API_KEY` or "
        "`wandb login`); `disabled`: nothing is logged.",
    )
    log_checkpoints: bool = Field(
        False,
        description="Upload the checkpoints and merged models as W&B artifacts; false: the "
        "artifacts only reference their folders (nothing is copied).",
    )
    base_url: str | None = Field(
        None, description="A self-hosted W&B server; null: `WANDB_BASE_URL` or W&B's cloud."
    )
    timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds W&B may take to start a run, and to flush one when it ends; past "
        "that the sweep goes on (an unreachable server stops the logging, not the sweep) and "
        "what was not sent stays on disk for `wandb sync`.",
    )


class TrackingConfig(Strict):
    """Where the sweep is logged besides its run directory."""

    wandb: WandbConfig | None = Field(
        None, description="Weights & Biases (docs/wandb.md); null: not logged to W&B."
    )

    def wandb_on(self) -> bool:
        return self.wandb is not None and self.wandb.mode != "disabled"
