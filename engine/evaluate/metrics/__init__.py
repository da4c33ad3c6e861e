"""Evaluation metrics, registered by name on import (see `registry`).

Importing this package does not import torch: the metrics are reductions over plain numbers;
the tensor math that feeds them lives with the evaluation actors (`engine.core.batches.token_nll`).
"""

from engine.evaluate.metrics import choice, exact_match, loss  # noqa: F401  (registers the built-ins)
from engine.evaluate.metrics.registry import Metric, add, get_metric, known, metric

__all__ = ["Metric", "add", "get_metric", "known", "metric"]
