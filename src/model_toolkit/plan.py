"""Plan: what an output file will contain, decided before any tensor is touched.

Every operation (convert now; prune, extract, replace, build later) is a function that returns a
Plan, so operations compose by transforming plans, and the writers in `formats/` execute one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dtypes import DType, cast
from .model import DEFAULT_CHUNK_BYTES, TensorRef

# A transform gets a chunk of source values and the index of its first element, and returns the
# replacement values (same length; any dtype, they are converted to the entry's dtype after).
Transform = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class PlanEntry:
    """One output tensor: its name, where its values come from, and the dtype it is written in."""

    name: str
    source: TensorRef
    dtype: DType
    transform: Transform | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def iter_chunks(self, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Any:
        """Output values in C order, chunk by chunk, already in the output dtype."""
        # Size chunks by the wider of the two dtypes so that neither side exceeds max_bytes.
        widest = max(self.source.dtype.itemsize, self.dtype.itemsize)
        start = 0
        for chunk in self.source.iter_chunks(max_bytes * self.source.dtype.itemsize // widest):
            values = chunk if self.transform is None else self.transform(chunk, start)
            start += len(chunk)
            yield convert_values(values, self.dtype)


def convert_values(values: np.ndarray, target: DType) -> np.ndarray:
    """Floats are cast as torch casts them; anything else is converted by numpy's rules."""
    if values.dtype == target.numpy:
        return values
    if target.is_float and (values.dtype.kind == "f" or values.dtype.name in _ML_FLOATS):
        return cast(values, target)
    return values.astype(target.numpy)


_ML_FLOATS = {"bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"}


@dataclass
class Plan:
    """The output's tensors in order, and its metadata (plain data; strings for safetensors)."""

    entries: list[PlanEntry]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries)
