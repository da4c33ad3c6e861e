"""Errors that stop a run for a reason outside the sweep's definition: the run directory is held
by another driver, Tune's saved state is damaged, the disk is full. The message says what
happened and how to recover; the CLI prints it without a traceback and exits 1."""

from __future__ import annotations


class RunError(RuntimeError):
    """The run cannot go on as it is; the message says why and what to do."""
