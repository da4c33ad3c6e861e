"""Everything that runs a sweep on Ray: one package per stage (`prepare`, `train`, `merge`,
`evaluate`, `report`) over shared pieces (`core`), the runner, preflight and the `raysoup`
command.

`engine.run` and friends load the runner on first use, so a worker that imports one engine
module (an evaluation actor, a data worker) does not pay for the whole sweep machinery.
"""

__all__ = ["run", "resume", "load_result", "SweepResult"]


def __getattr__(name: str):
    if name in __all__:
        from engine import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
