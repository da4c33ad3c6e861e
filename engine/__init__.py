"""Everything that runs on Ray: data preparation, trials, results, and the `raysoup` command."""

from engine.runner import SweepResult, load_result, resume, run

__all__ = ["run", "resume", "load_result", "SweepResult"]
