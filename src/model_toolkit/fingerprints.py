"""Content fingerprints: whether two files hold the same weights, whatever their format.

A component's content fingerprint (a SHA-256 of its float16-rounded weights) tells the library
scan which files share a part; a class's 4-digit fingerprint extends the metric's idea to the
classes it does not cover (SDXL, SD3, Flux, ...).
"""

from __future__ import annotations

import numpy as np

from .analysis import Analysis
from .architectures.detect import allowed_keys
from .architectures.registry import load_registry
from .dtypes import DTYPES
from .metric import WRAP, tensor_sums
from .model import values
from .plan import PlanEntry


def content_fingerprint(entries: list[tuple[str, PlanEntry]]) -> str:
    """A hash of a component's weights that ignores format, key prefix and float width: each
    float is taken rounded to float16 (so an fp32 copy and its fp16 cast match), each integer
    as int64, tensors in key order. Two files share a component when their fingerprints do."""
    import hashlib

    digest = hashlib.sha256()
    f16, i64 = DTYPES["F16"], DTYPES["I64"]
    for key, entry in sorted(entries, key=lambda pair: pair[0]):
        digest.update(f"{key}{list(entry.shape)}".encode())
        target = f16 if entry.dtype.is_float else i64
        for chunk in values(entry.cast_to(target)):
            digest.update(np.ascontiguousarray(chunk).view(np.uint8))
    return digest.hexdigest()


# Classes the original metric does not cover get a 4-digit fingerprint of their own, in the same
# spirit: the float16-rounded weights' sum of sigmoid(w) - 0.5, scaled. No reference model is
# known for them, so the digits tell "same weights?" between files, not "which model".
NOT_FINGERPRINTED = ("LoRA-", "Embedding-", "EMA-")


def class_fingerprints(analysis: Analysis) -> dict[str, str]:
    """class -> `NNNN` (`NaN!` for NaN or inf weights) for each class beyond UNET/VAE/CLIP v1-v2."""
    detection = analysis.detection
    if detection.resolved is None:
        return {}
    registry = load_registry()
    covered = set(registry.metric_parts)
    result = {}
    for cls, component in detection.components.items():
        if cls in covered or cls.startswith(NOT_FINGERPRINTED):
            continue
        keys = allowed_keys(detection.resolved, {cls: [component]}, registry, {cls})
        refs = [
            analysis.value(name)
            for name, ref in analysis.tensors.items()
            if detection.keys[name] in keys and ref.dtype.is_float
        ]
        total = float(np.sum(np.array(tensor_sums(refs), dtype=np.float64)))
        result[cls] = "NaN!" if not np.isfinite(total) else f"{int(abs(total) * 100) % WRAP:04d}"
    return result
