"""What the operations share: sources, finding a component, the fix-ups, the record.

Every operation takes an opened file or a Plan (the output of another operation), so that
operations compose without reading a tensor: only the final write does.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np

from ..analysis import Analysis
from ..architectures.locate import Found, component_names
from ..architectures.registry import Architecture, Component, load_registry
from ..dtypes import DTYPES, PRECISIONS, DType, auto_precision, float_bytes, target_dtype
from ..errors import UsageError
from ..model import Source, Tensor, TensorRef, values
from ..plan import PlanEntry
from ..quantization import times
from ..version import __version__

HISTORY_KEY = "modeltoolkit.history"


def source_name(source: Source) -> str:
    return Path(source.origin).name if source.origin else "the model"


def entries_of(source: Source, analysis: Analysis | None = None) -> dict[str, PlanEntry]:
    """Every tensor of a source as a plan entry, by name (a file's entries copy its tensors);
    with its analysis, the companions of quantized weights are `fixed` (never cast)."""
    entries = {entry.name: entry for entry in source.entries}
    quant = analysis.quant if analysis is not None else None
    if quant is not None:
        for name in [*quant.companions, *quant.markers]:
            entry = entries[name]
            entries[name] = PlanEntry(entry.name, entry.reads, entry.dtype, entry.transform, True)
    return entries


def with_companions(
    pairs: list[tuple[str, PlanEntry]], analysis: Analysis, entries: dict[str, PlanEntry]
) -> list[tuple[str, PlanEntry]]:
    """(key, entry) pairs and, after each quantized weight, its companions under the names
    its key gives them (`x.weight` as `y.weight`: `x.scale_weight` as `y.scale_weight`), and
    the marker (`scaled_fp8`) renamed as the weights' prefix is."""
    quant = analysis.quant
    if quant is None:
        return pairs
    owned: dict[str, list[str]] = {}
    for companion, weight in quant.companions.items():
        owned.setdefault(weight, []).append(companion)
    result: list[tuple[str, PlanEntry]] = []
    source_prefix: str | None = None
    for key, entry in pairs:
        result.append((key, entry))
        source = entry.name
        if source not in quant.layers:
            continue
        stem = source.rpartition(".")[0]
        tail = source[len(stem) :]  # ".weight" (".qweight")
        out_stem = key[: -len(tail)] if key.endswith(tail) else key
        for companion in owned.get(source, ()):
            result.append((out_stem + companion[len(stem) :], entries[companion]))
        if source_prefix is None and source.endswith(key):
            source_prefix = source[: len(source) - len(key)]
    for marker in quant.markers:
        if source_prefix is not None and marker.startswith(source_prefix):
            result.append((marker[len(source_prefix) :], entries[marker]))
    return result


def dequantized(
    entries: list[PlanEntry], analysis: Analysis, precision: DType | None
) -> list[PlanEntry]:
    """Under an explicit float precision (not `keep`, not `auto`), fp8 weights with one scale
    each become their values (`w.float() * scale`, then cast as torch casts), and their
    companions and marker go: what ComfyUI computes when it loads them. Other quantized
    formats cannot be converted here: refused in one line."""
    quant = analysis.quant
    if quant is None or precision is None or precision.narrow_only:
        return entries
    planned = []
    for entry in entries:
        source = entry.name
        if source in quant.companions or source in quant.markers:
            continue
        form = quant.layers.get(source)
        if form is None:
            planned.append(entry)
            continue
        scale = quant.scale_of(source, analysis.tensors)
        if scale is None:
            raise UsageError(
                f"{source_name_of(analysis)}: {form} layers ({source}) cannot be converted to "
                f"{precision.name}; keep their precision (--precision keep)"
            )
        planned.append(PlanEntry(entry.name, entry.reads, precision, partial(times, scale)))
    return planned


def dequantized_pairs(
    pairs: list[tuple[str, PlanEntry]], analysis: Analysis, precision: DType | None
) -> list[tuple[str, PlanEntry]]:
    """`dequantized` for (key, entry) pairs: the pairs whose entries remain, entries replaced."""
    remaining = {e.name: e for e in dequantized([e for _, e in pairs], analysis, precision)}
    return [(key, remaining[e.name]) for key, e in pairs if e.name in remaining]


FP8_MAX = 448.0  # float8 e4m3fn's largest value


def scaled_to_fp8(entries: list[PlanEntry], analysis: Analysis) -> list[PlanEntry]:
    """ComfyUI's fp8_scaled: each Linear weight (a 2-D `.weight` of the diffusion model, or of
    a component file; embeddings and the like in registry `quantization.unscaled` excepted)
    divided by its scale, amax / 448 in float32, and stored as fp8 e4m3fn with the scale beside
    it (`.scale_weight`), the marker `scaled_fp8` (an empty fp8 tensor) at its prefix; every
    other float in the model's 16-bit type. Finding amax reads each weight once before the
    write (two passes, one chunk at a time)."""
    registry = load_registry()
    skip = tuple(registry.quantization.get("unscaled", ()))
    arch = registry.architectures.get(analysis.architecture or "")
    prefix = "model.diffusion_model." if arch is not None and arch.prefixed else ""
    other = auto_precision(
        float_bytes(analysis.tensors.values()), arch.precision if arch else "F16"
    )
    fp8 = DTYPES["F8_E4M3"]
    planned: list[PlanEntry] = []
    scaled = False
    for entry in entries:
        name = entry.name
        linear = (
            name.startswith(prefix)
            and name.endswith(".weight")
            and len(entry.shape) == 2
            and entry.numel > 1024
            and entry.reads.dtype.is_float
            and not any(part in name for part in skip)
        )
        if not linear:
            planned.append(entry.cast_to(target_dtype(entry.reads.dtype, other)))
            continue
        floats = PlanEntry(name, entry.reads, DTYPES["F32"], entry.transform)
        amax = np.float32(0)
        for chunk in values(floats):
            with np.errstate(invalid="ignore"):
                amax = max(amax, np.float32(np.nanmax(np.abs(chunk)) if len(chunk) else 0))
        scale = np.float32(amax) / np.float32(FP8_MAX) if np.isfinite(amax) and amax > 0 else 1
        scale = np.float32(scale)
        planned.append(PlanEntry(name, entry.reads, fp8, partial(_divided, float(scale), floats)))
        stem = name[: -len(".weight")]
        ref = TensorRef.from_array(
            stem + ".scale_weight", np.array(scale, np.float32), DTYPES["F32"]
        )
        planned.append(PlanEntry(ref.name, ref, DTYPES["F32"], fixed=True))
        scaled = True
    if scaled:
        marker = TensorRef.zeros(prefix + "scaled_fp8", (0,), fp8)
        planned.append(PlanEntry(marker.name, marker, fp8, fixed=True))
    return planned


def _divided(scale: float, floats: PlanEntry, chunk: np.ndarray, start: int) -> np.ndarray:
    values_ = floats._convert(chunk, start)  # the source's values as float32, transforms run
    return values_ / np.float32(scale)


def valued_tensors(analysis: Analysis, precision: DType | None) -> list[tuple[str, Tensor, DType]]:
    """Each tensor of a model that an arithmetic operation (merge, lora apply) reads: its
    name, its values as meant (an fp8-scaled weight times its scale, a GGUF block decoded),
    and the type it is written in (its own, or `precision`; float32 for a block-quantized
    one). Quantized companions go with the quantization; a quantized model needs an explicit
    float precision, refused in one line without it."""
    quantized = analysis.quant is not None or any(
        t.dtype.quantized for t in analysis.tensors.values()
    )
    if quantized and (precision is None or precision.narrow_only):
        raise UsageError(
            f"{source_name_of(analysis)} is quantized: this needs --precision bf16, fp16 or fp32"
        )
    quant = analysis.quant
    skipped = set(quant.companions) | set(quant.markers) if quant else set()
    result = []
    for name, ref in analysis.tensors.items():
        if name in skipped:
            continue
        dtype = ref.dtype if precision is None else target_dtype(ref.dtype, precision)
        result.append((name, analysis.value(name), DTYPES["F32"] if dtype.quantized else dtype))
    return result


def copied(value: Tensor, dtype: DType) -> PlanEntry:
    """A tensor written as it is, floats cast to `dtype`."""
    entry = PlanEntry(value.name, value, value.dtype)  # type: ignore[arg-type]
    return entry.cast_to(dtype) if value.dtype.is_float else entry


def source_name_of(analysis: Analysis) -> str:
    return Path(analysis.path).name if analysis.path else "the model"


def component_entries(
    found: Found, analysis: Analysis, entries: dict[str, PlanEntry]
) -> list[tuple[str, PlanEntry]]:
    """(key without prefix, entry) for each tensor of a found component, in source order, and
    the CLIP position ids a stand-in's naming leaves out and its output class keeps (0..76)."""
    located, missing = component_names(found, analysis.detection)
    result = [(key, entries[name]) for key, name in located]
    i64 = DTYPES["I64"]
    for key, shape in missing:
        ids = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
        result.append((key, PlanEntry(key, TensorRef.from_array(key, ids, i64), i64)))
    return result


def standalone_entries(
    found: Found, pairs: list[tuple[str, PlanEntry]]
) -> list[tuple[str, PlanEntry]]:
    """A component's (key, entry) pairs renamed as a file of it alone is named where users
    load it (registry `standalone`), keys that naming does not have left out."""
    spec = found.output_component.standalone
    if spec is None:
        return pairs
    other, prefix = spec
    allowed = {name for name, _ in load_registry().components[other].keys}
    return [(prefix + key, entry) for key, entry in pairs if prefix + key in allowed]


def position_ids_entry(entry: PlanEntry, fix_clip: bool) -> PlanEntry:
    """CLIP position ids as int64, as the original toolkit writes them: rewritten to 0..76 with
    fix_clip, else the stored values converted (a float copy truncates, as torch's .to does)."""
    i64 = DTYPES["I64"]
    if fix_clip:
        ids = np.arange(entry.numel, dtype=np.int64).reshape(entry.shape)
        return PlanEntry(entry.name, TensorRef.from_array(entry.name, ids, i64), i64)
    return entry.cast_to(i64)


def finish(
    entry: PlanEntry, name: str, precision: DType | None, is_position_ids: bool, fix_clip: bool
) -> PlanEntry:
    """Rename, fix position ids, cast floats to the precision."""
    if precision is not None and precision.scaled:
        raise UsageError("fp8_e4m3fn_scaled is a precision for convert and prune")
    entry = entry.renamed(name)
    if is_position_ids:
        return position_ids_entry(entry, fix_clip)
    return entry.cast_to(target_dtype(entry.dtype, precision))


def record(metadata: dict[str, object], operation: dict[str, object]) -> dict[str, object]:
    """Add what was done to the `modeltoolkit.history` metadata entry (a JSON list)."""
    metadata = dict(metadata)
    history = metadata.get(HISTORY_KEY, "[]")
    try:
        steps = json.loads(history) if isinstance(history, str) else list(history)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        steps = []
    steps.append(operation)
    metadata[HISTORY_KEY] = json.dumps(steps)
    metadata["modeltoolkit.version"] = __version__
    return metadata


def precision_name(precision: DType | None) -> str:
    if precision is None:
        return "keep"
    if precision.scaled:
        return "fp8_e4m3fn_scaled"
    word = next(w for w, n in PRECISIONS.items() if n == precision.name and w != "auto")
    return f"auto ({word})" if precision.narrow_only else word


def slot_prefix(arch: Architecture, cls: str, incoming: Component) -> str:
    """The prefix a part of `cls` takes in a file of `arch`: its slot's (a Flux VAE goes
    under `vae.` wherever it came from), else the incoming component's own."""
    if not arch.prefixed:
        return ""
    slot = arch.slots.get(cls)
    return load_registry().components[slot].prefix if slot else incoming.prefix
