"""Evaluation metrics, registered by name on import (see `registry`).

Importing this package does not import torch: the metrics are reductions over plain numbers,
and the tensor math (`loss.token_nll`) uses only tensor methods.
"""

from engine.metrics import choice, exact_match, loss  # noqa: F401  (registers the built-ins)
from engine.metrics.registry import Metric, add, get_metric, known, metric

__all__ = ["Metric", "add", "get_metric", "known", "metric"]
