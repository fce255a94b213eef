"""convert: every tensor kept, floats cast to a precision (or kept), metadata carried over."""

from __future__ import annotations

from ..dtypes import DType, target_dtype
from ..model import Source
from ..plan import Plan
from .common import entries_of


def convert(source: Source, precision: DType | None = None) -> Plan:
    """The whole model, in file order; integer tensors (position ids, step counters) untouched."""
    entries = [
        entry.cast_to(target_dtype(entry.dtype, precision)) for entry in entries_of(source).values()
    ]
    return Plan(entries, dict(source.metadata), source.origin)
