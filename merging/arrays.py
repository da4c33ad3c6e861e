"""numpy float32 conversions that match torch bit for bit, for torch-free merges.

Stored bfloat16 is read as ``uint16`` (numpy has no bfloat16): widening is a 16-bit
shift; narrowing rounds to nearest, ties to even, as torch's ``.to(torch.bfloat16)``
does for finite values and infinities (merged values are checked finite before they
are narrowed). float16 is native to numpy and rounds the same way as torch. NaN inputs
are refused, so NaN payloads (which numpy keeps and torch quiets) never matter.
"""

from __future__ import annotations

import numpy as np

FLOAT_CODES = ("F32", "F16", "BF16")  # stored dtypes the array path reads and writes
NUMPY = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def to_float32(raw: np.ndarray, code: str) -> np.ndarray:
    """A stored float array (``code`` as in the safetensors header) as float32."""
    if code == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


def from_float32(values: np.ndarray, code: str) -> np.ndarray:
    """float32 values stored as ``code``; bfloat16 comes back as its ``uint16`` bits."""
    if code != "BF16":
        with np.errstate(over="ignore"):  # beyond float16's range is inf, as in torch
            return values.astype(NUMPY[code], copy=False)
    bits = values.view(np.uint32)
    bits = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))  # round half to even
    return (bits >> 16).astype(np.uint16)
