"""Data selection stages (dedup, filters, importance resampling, random), run on Ray Data.

Each stage is one module that registers itself by the `type:` users write; importing this
package registers them all.
"""

from engine.prepare.selection import dsir, exact_dedup, filters, near_dedup, random_subset  # noqa: F401
from engine.prepare.selection.pipeline import apply_selection
from engine.prepare.selection.registry import get_stage, known_stages, register

__all__ = ["apply_selection", "get_stage", "known_stages", "register"]
