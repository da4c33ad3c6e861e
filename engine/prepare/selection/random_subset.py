"""`random`: a uniform sample of fixed size, the baseline every other selection is compared with.

The same Gumbel top-k as importance resampling with all weights equal, so smaller keeps are
inside larger ones for a given seed."""

from __future__ import annotations

import numpy as np

from engine.prepare.selection.dsir import resample
from engine.prepare.selection.features import resolve_keep
from engine.prepare.selection.registry import StageInput, register


def _ids(texts, keys, rows):
    return {"key": keys, "row": rows}


@register("random")
def random_subset(config, data: StageInput) -> dict[str, np.ndarray]:
    k = resolve_keep(config.keep, data.rows)
    found = data.scan(_ids)
    kept = resample(np.zeros(len(found["row"])), found["key"], found["row"], k, config.seed)
    return {"not_selected": found["row"][~kept]}
