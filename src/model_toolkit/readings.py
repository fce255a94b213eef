"""Facts read from a few small tensors: CLIP position ids, a LoRA's alphas.

What the header cannot say, but a few bytes can; the report reads them unless asked not to.
"""

from __future__ import annotations

import numpy as np

from .analysis import Analysis
from .model import read_all


def broken_position_ids(analysis: Analysis) -> dict[str, list[int]]:
    """For each CLIP position ids tensor: the indices whose id, as int64, is not 0..76."""
    result = {}
    for name in analysis.position_ids:
        ids = read_all(analysis.tensors[name]).reshape(-1)
        if ids.dtype.kind == "f" or ids.dtype.name == "bfloat16":
            ids = ids.astype(np.float64)
        as_int = np.trunc(ids).astype(np.int64) if ids.dtype.kind == "f" else ids.astype(np.int64)
        expected = np.arange(len(as_int), dtype=np.int64)
        result[name] = np.nonzero(as_int != expected)[0].tolist()
    return result


def lora_alphas(analysis: Analysis) -> list[float]:
    """The distinct values of a LoRA's `.alpha` scalars (a few bytes each)."""
    found = set()
    for name in analysis.kept_keys:
        if name.endswith(".alpha") and analysis.tensors[name].numel == 1:
            scalar = read_all(analysis.tensors[name]).astype(np.float64)
            found.add(float(scalar.item()))
    return sorted(found)
