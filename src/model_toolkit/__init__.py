"""Model Toolkit: inspect, prune, convert and repair Stable Diffusion-family model files.

import model_toolkit as mtk
with mtk.open("model.ckpt") as model:        # reads the header only, never runs a pickle
    plan = mtk.convert(model, mtk.precision_dtype("fp16"))
    mtk.write_plan(plan, "model.safetensors")  # streamed, atomic
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    FormatError,
    ModelToolkitError,
    OutputExistsError,
    UnsafeFileError,
    UsageError,
)
from .version import __version__

if TYPE_CHECKING:
    from .analysis import Analysis, analyze
    from .dtypes import DTYPES, DType, precision_dtype
    from .formats import open_model
    from .metric import Metric, compute_metric
    from .model import ModelFile, Tensor, TensorRef, read_all, values
    from .operations import convert
    from .plan import Plan, PlanEntry
    from .write import write_plan

    open = open_model

# The API is imported on first use: `mtk inspect` needs neither numpy nor the writers, and
# importing everything costs more than identifying a file.
_LAZY = {
    "Analysis": "analysis",
    "analyze": "analysis",
    "DTYPES": "dtypes",
    "DType": "dtypes",
    "precision_dtype": "dtypes",
    "Metric": "metric",
    "compute_metric": "metric",
    "open_model": "formats",
    "ModelFile": "model",
    "Tensor": "model",
    "TensorRef": "model",
    "read_all": "model",
    "values": "model",
    "convert": "operations",
    "Plan": "plan",
    "PlanEntry": "plan",
    "write_plan": "write",
}


def __getattr__(name: str) -> Any:
    if name == "open":
        return __getattr__("open_model")
    if name not in _LAZY:  # a submodule, as `model_toolkit.operations` after a plain import
        try:
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the submodule exists; something it needs is missing
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DTYPES",
    "Analysis",
    "DType",
    "FormatError",
    "Metric",
    "ModelFile",
    "ModelToolkitError",
    "OutputExistsError",
    "Plan",
    "PlanEntry",
    "Tensor",
    "TensorRef",
    "UnsafeFileError",
    "UsageError",
    "__version__",
    "analyze",
    "compute_metric",
    "convert",
    "open",
    "open_model",
    "precision_dtype",
    "read_all",
    "values",
    "write_plan",
]
