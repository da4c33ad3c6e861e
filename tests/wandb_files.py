"""Reading W&B's offline run files back in tests: the reader is `engine/agent/runfile.py`
(raysoup follows a W&B sweep script's run file with it while the script runs)."""

from __future__ import annotations

from engine.agent.runfile import Run, read_run, read_runs, records

__all__ = ["Run", "read_run", "read_runs", "records"]
