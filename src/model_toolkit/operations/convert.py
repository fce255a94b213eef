"""convert: every tensor kept, floats cast to a precision (or kept), metadata carried over."""

from __future__ import annotations

from ..analysis import analyze
from ..dtypes import DType, target_dtype
from ..model import Source
from ..plan import Plan
from .common import dequantized, entries_of, scaled_to_fp8


def convert(source: Source, precision: DType | None = None) -> Plan:
    """The whole model, in file order; integer tensors (position ids, step counters) untouched.
    Quantized layers keep their companions (scales) as they are; an explicit float precision
    dequantizes fp8-scaled weights (and drops the scales and marker)."""
    analysis = analyze(source, None)
    entries = dequantized(list(entries_of(source, analysis).values()), analysis, precision)
    if precision is not None and precision.scaled:
        planned = scaled_to_fp8(entries, analysis)
    else:
        planned = [entry.cast_to(target_dtype(entry.dtype, precision)) for entry in entries]
    return Plan(planned, dict(source.metadata), source.origin)
