"""Model Toolkit: inspect, prune, convert and repair Stable Diffusion-family model files.

import model_toolkit as mtk
with mtk.open("model.ckpt") as model:        # reads the header only, never runs a pickle
    plan = mtk.convert(model, mtk.precision_dtype("fp16"))
    mtk.write_plan(plan, "model.safetensors")  # streamed, atomic
"""

from __future__ import annotations

from .analysis import Analysis, analyze
from .dtypes import DTYPES, DType, precision_dtype
from .errors import (
    FormatError,
    ModelToolkitError,
    OutputExistsError,
    UnsafeFileError,
    UsageError,
)
from .fingerprints import Metric, compute_metric
from .formats import open_model
from .model import ModelFile, TensorRef
from .operations import convert
from .plan import Plan, PlanEntry
from .version import __version__
from .write import write_plan

open = open_model


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
    "write_plan",
]
