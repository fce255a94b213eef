"""convert: every tensor kept, floats cast to a precision (or kept), metadata carried over."""

from __future__ import annotations

from ..dtypes import DType, target_dtype
from ..model import ModelFile
from ..plan import Plan, PlanEntry


def convert(model: ModelFile, precision: DType | None = None) -> Plan:
    """The whole model, in file order; integer tensors (position ids, step counters) untouched."""
    entries = [
        PlanEntry(name, ref, target_dtype(ref.dtype, precision))
        for name, ref in model.tensors.items()
    ]
    return Plan(entries, dict(model.metadata))
