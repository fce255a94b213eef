"""merge: AUTOMATIC1111's checkpoint merger, streamed: a tensor's output is computed chunk by
chunk from the same element range of each input, so memory is a few chunks whatever the
models' size (its merger holds two or three whole models).

Modes, as its merger defines them: weighted sum `A * (1 - alpha) + B * alpha`, add difference
`A + (B - C) * alpha`, no interpolation (A alone: a conversion with the recipe recorded). alpha
may differ per component class (keep A's VAE with `VAE-v1=0`). Arithmetic in float32, then the
torch-exact cast to the output type (A's, unless a precision is given).

What is merged: A's tensors (models no architecture matches are merged by tensor name). A
tensor A has and B (or C) lacks is A's; one only B has is left out; CLIP position ids and
integer tensors are A's. Inputs of different architectures, or with
a shared tensor of another shape, are refused with what differs, except the one case its merger
handles: an inpainting (or instruct-pix2pix) A with more input channels than B, whose first
channels are merged and the others kept (how "make an inpainting model" recipes work).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis import Analysis, analyze
from ..architectures.detect import allowed_keys
from ..architectures.locate import POSITION_IDS, check_class
from ..architectures.registry import load_registry
from ..dtypes import DTYPES, DType
from ..errors import UsageError
from ..model import Source, Tensor, TensorRef, read_all
from ..plan import Plan, PlanEntry
from ..storage import FileSpan, InMemory, Zeros
from .common import copied, record, source_name, valued_tensors

MODES = {
    "weighted-sum": "Weighted sum",
    "add-difference": "Add difference",
    "no-interpolation": "No interpolation",
}
F32 = DTYPES["F32"]


def merge(
    a: Source,
    b: Source | None = None,
    c: Source | None = None,
    mode: str = "weighted-sum",
    alpha: float = 0.5,
    alphas: Mapping[str, float] | None = None,
    precision: DType | None = None,
    hashes: Mapping[str, str | None] | None = None,
) -> Plan:
    """A's tensors merged with B's (and C's) by `mode`; `alphas` per component class override
    `alpha`; `hashes` (file -> SHA-256, where known) go into the recipe."""
    if mode not in MODES:
        raise UsageError(f"unknown merge mode {mode!r}; use {', '.join(MODES)}")
    needed = {"weighted-sum": 2, "add-difference": 3, "no-interpolation": 1}[mode]
    given = [s for s in (a, b, c) if s is not None]
    if len(given) != needed:
        raise UsageError(f"{mode} merges {needed} models; {len(given)} given")
    analyses = [analyze(source, None) for source in given]
    names = [source_name(source) for source in given]
    _check_same_architecture(analyses, names)
    per_class = dict(alphas or {})
    for cls in per_class:
        check_class(cls)
    for analysis in analyses[1:]:
        valued_tensors(analysis, precision)  # a quantized B or C is refused as A is
    classes = _classes_of(analyses[0])
    first, others = analyses[0], analyses[1:]
    planned = []
    for name, value, dtype in valued_tensors(first, precision):
        ref = first.tensors[name]
        sides = [other.value(name) if name in other.tensors else None for other in others]
        weight = per_class.get(classes.get(name, ""), alpha)
        mergeable = (
            mode != "no-interpolation"
            and ref.dtype.is_float
            and not name.endswith(POSITION_IDS)
            and all(side is not None for side in sides)
        )
        if not mergeable or weight == 0:
            planned.append(copied(value, dtype))
            continue
        shapes = [tuple(side.shape) for side in sides]  # type: ignore[union-attr]
        if any(shape != tuple(ref.shape) for shape in shapes):
            planned.append(_merged_leading_channels(name, value, sides, mode, weight, dtype, names))
            continue
        ranged = [_Ranged(side) for side in sides]  # type: ignore[arg-type]
        combine = partial(_combine, mode, weight, ranged)
        planned.append(PlanEntry(name, value, dtype, combine))  # type: ignore[arg-type]
    metadata = _metadata(given, analyses, names, mode, alpha, per_class, precision, hashes or {})
    operation = {"op": "merge", "mode": mode, "alpha": alpha, "alphas": per_class, "from": names}
    return Plan(planned, record(metadata, operation), a.origin)


def _check_same_architecture(analyses: list[Analysis], names: list[str]) -> None:
    """One architecture for all, or none identified (then tensors are merged by name)."""
    architectures = [analysis.architecture for analysis in analyses]
    if len(set(architectures)) > 1:
        said = ", ".join(
            f"{n} is {arch or 'not identified'}"
            for n, arch in zip(names, architectures, strict=True)
        )
        raise UsageError(f"cannot merge models of different architectures: {said}")


def _classes_of(analysis: Analysis) -> dict[str, str]:
    """Tensor name -> its component class, for per-class alphas."""
    registry = load_registry()
    detection = analysis.detection
    resolved = detection.resolved
    result: dict[str, str] = {}
    if resolved is None:
        return result
    for cls, component in detection.components.items():
        keys = allowed_keys(resolved, {cls: [component]}, registry, {cls})
        for name, key in detection.keys.items():
            if key in keys:
                result.setdefault(name, cls)
    return result


class _Ranged:
    """A tensor's values by element range, as float32: read where they lie (a span of the file)
    or, for storages that only stream (compressed zip entries, strided views, decoded blocks),
    read whole once and kept (one tensor, not a model)."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor
        self.whole: np.ndarray | None = None
        self.lock = threading.Lock()
        # Where its bytes can be read by range: decided once, not at every chunk.
        self.direct = (
            isinstance(tensor, TensorRef)
            and tensor.is_contiguous
            and not tensor.big_endian
            and isinstance(tensor.storage, FileSpan | InMemory | Zeros)
        )

    def read(self, start: int, count: int) -> np.ndarray:
        """The values [start, start + count), in the tensor's own type where they are read in
        place (float16, bfloat16, ...), else as float32."""
        tensor = self.tensor
        if self.direct:
            assert isinstance(tensor, TensorRef)
            size = tensor.dtype.itemsize
            offset = (tensor.storage_offset + start) * size
            [(_, job)] = list(tensor.storage.chunks(offset, count * size, count * size))
            return job().view(tensor.dtype.numpy)
        with self.lock:
            whole = self.whole
            if whole is None:
                whole = self.whole = read_all(tensor).reshape(-1).astype(np.float32)
            if start + count >= len(whole):
                self.whole = None  # its last range: the tensor leaves memory
        return whole[start : start + count]


# The value types the compiled loop reads as they are (_kernels.mix).
KINDS = {"float32": 0, "float16": 1, "bfloat16": 2}


def _combine(
    mode: str, weight: float, sides: list[_Ranged], chunk: np.ndarray, start: int
) -> np.ndarray:
    """The merged float32 values of one chunk of A: its merger's formulas, each operation
    rounded to float32 (the factor `1 - alpha` computed first, as Python and torch do)."""
    values = [chunk, *(side.read(start, len(chunk)) for side in sides)]
    first = np.float32(1 - weight) if mode == "weighted-sum" else np.float32(0)
    factor = np.float32(weight)
    kinds = [KINDS.get(v.dtype.name) for v in values]
    if _kernels is not None and None not in kinds:
        out = np.empty(len(chunk), np.float32)
        c = values[2] if len(values) > 2 else None
        _kernels.mix(values[0], kinds[0], values[1], kinds[1], c, kinds[-1], first, factor, out)
        return out
    a, b = (v.astype(np.float32) for v in values[:2])
    if mode == "weighted-sum":
        return a * first + b * factor
    return a + (b - values[2].astype(np.float32)) * factor


def widened(values: np.ndarray) -> np.ndarray:
    """A tensor's values as float32 (a new array), by the compiled loop where it can: numpy's
    float16 widening is a scalar loop, lora apply widens every tensor it changes."""
    kind = KINDS.get(values.dtype.name)
    if _kernels is None or kind is None or not values.flags.c_contiguous:
        return values.astype(np.float32)
    out = np.empty(values.shape, np.float32)
    _kernels.widen(values.reshape(-1), kind, out.reshape(-1))
    return out


def added(chunk: np.ndarray, delta: np.ndarray, strength: float) -> np.ndarray:
    """`float32(W) + delta * strength`, the compiled loop reading W as it is stored (fp16,
    bf16, fp32): the same values as widening, multiplying and adding one by one."""
    kind = KINDS.get(chunk.dtype.name)
    if _kernels is None or kind is None or not delta.flags.c_contiguous:
        values = widened(chunk)
        values += delta * np.float32(strength) if strength != 1 else delta
        return values
    out = np.empty(len(chunk), np.float32)
    one, factor = np.float32(1), np.float32(strength)
    _kernels.mix(chunk, kind, delta, 0, None, 0, one, factor, out)
    return out


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`a - b` in float32 of two tensors' values in their own types (lora extract's change):
    the compiled loop reads fp16/bf16 without numpy's slow widening; the same values."""
    kinds = [KINDS.get(v.dtype.name) for v in (a, b)]
    if _kernels is not None and None not in kinds:
        out = np.empty(a.size, np.float32)
        one, minus_one = np.float32(1), np.float32(-1)
        _kernels.mix(a.reshape(-1), kinds[0], b.reshape(-1), kinds[1], None, 0, one, minus_one, out)
        return out.reshape(a.shape)
    return a.astype(np.float32) - b.astype(np.float32)


try:  # the optional compiled loops (_kernels.c): the same values, without numpy's temporaries
    from .. import _kernels
except ImportError:  # pragma: no cover - built wherever a C compiler is found
    _kernels = None  # type: ignore[assignment]


def _merged_leading_channels(
    name: str,
    value: Tensor,
    sides: list[Any],
    mode: str,
    weight: float,
    dtype: DType,
    names: list[str],
) -> PlanEntry:
    """An inpainting (9-channel) or instruct-pix2pix (8-channel) A's first layer against B's
    4 channels: those are merged, the rest kept, as AUTOMATIC1111's merger does. Small tensors
    (a convolution's weight): computed whole."""
    a = read_all(value).astype(np.float32)
    others = [read_all(side).astype(np.float32) for side in sides]
    same = all(
        o.ndim == a.ndim and o.shape[0] == a.shape[0] and o.shape[2:] == a.shape[2:] for o in others
    )
    width = others[0].shape[1] if others and others[0].ndim > 1 else None
    if (
        not same
        or width is None
        or width > a.shape[1]
        or any(o.shape != others[0].shape for o in others)
    ):
        shapes = " vs ".join(str(list(t.shape)) for t in [a, *others])
        raise UsageError(f"{name} has other shapes in {' and '.join(names)}: {shapes}")
    lead = a[:, :width]
    w = np.float32(weight)
    if mode == "weighted-sum":
        lead = lead * np.float32(1 - weight) + others[0] * w
    else:
        lead = lead + (others[0] - others[1]) * w
    out = a.copy()
    out[:, :width] = lead
    ref = TensorRef.from_array(name, out, F32)
    return PlanEntry(name, ref, F32).cast_to(dtype)


@dataclass
class _Input:
    name: str
    sha256: str | None
    legacy: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def _metadata(
    given: list[Source],
    analyses: list[Analysis],
    names: list[str],
    mode: str,
    alpha: float,
    alphas: Mapping[str, float],
    precision: DType | None,
    hashes: Mapping[str, str | None],
) -> dict[str, Any]:
    """A's metadata, with AUTOMATIC1111's `sd_merge_recipe` and `sd_merge_models`."""
    inputs = []
    for source, name in zip(given, names, strict=True):
        inputs.append(
            _Input(name, hashes.get(source.origin), _legacy_hash(source.origin), source.metadata)
        )
    recipe = {
        "type": "model-toolkit",
        "primary_model_hash": inputs[0].sha256,
        "secondary_model_hash": inputs[1].sha256 if len(inputs) > 1 else None,
        "tertiary_model_hash": inputs[2].sha256 if len(inputs) > 2 else None,
        "interp_method": MODES[mode],
        "multiplier": alpha,
        "multipliers": dict(alphas),
        "save_as_half": precision is not None and precision.name == "F16",
        "custom_name": "",
        "config_source": 0,
        "bake_in_vae": "None",
        "discard_weights": "",
        "is_inpainting": any("Inpainting" in c for c in analyses[0].components.values()),
        "is_instruct_pix2pix": any("Pix2Pix" in c for c in analyses[0].components.values()),
    }
    models: dict[str, Any] = {}
    for item in inputs:
        models.update(_json(item.metadata.get("sd_merge_models")) or {})
        models[item.sha256 or item.name] = {  # by SHA-256 as the webui, else by name
            "name": item.name,
            "legacy_hash": item.legacy,
            "sd_merge_recipe": _json(item.metadata.get("sd_merge_recipe")),
        }
    metadata = dict(given[0].metadata)
    metadata["sd_merge_recipe"] = json.dumps(recipe)
    metadata["sd_merge_models"] = json.dumps(models)
    return metadata


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _legacy_hash(origin: str) -> str | None:
    """AUTOMATIC1111's old model hash (AutoV1): 64 KiB at 1 MiB, read in a moment."""
    if not origin or not Path(origin).is_file():
        return None
    from ..hashes import compute_hashes

    return compute_hashes(origin, ("autov1",)).values.get("autov1")
