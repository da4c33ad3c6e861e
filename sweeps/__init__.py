"""What a user writes: sweep definitions, their search spaces, and loaders.

Importable without Ray or torch, so validation is instant.
"""

from sweeps.config import (
    CheckpointConfig,
    DataConfig,
    FinetuneConfig,
    LoraConfig,
    ModelConfig,
    ResourcesConfig,
    Sweep,
    TrainConfig,
)
from sweeps.errors import SweepError
from sweeps.load import dump_sweep, load_sweep, parse_sweep
from sweeps.space import choice, grid, loguniform, randint, uniform

__all__ = [
    "Sweep",
    "ModelConfig",
    "FinetuneConfig",
    "LoraConfig",
    "DataConfig",
    "TrainConfig",
    "CheckpointConfig",
    "ResourcesConfig",
    "SweepError",
    "load_sweep",
    "parse_sweep",
    "dump_sweep",
    "grid",
    "choice",
    "uniform",
    "loguniform",
    "randint",
]
