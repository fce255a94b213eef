"""Plan -> GGUF, streamed, in ComfyUI-GGUF's conventions, quantized by the gguf package.

Written by hand rather than with gguf-py's GGUFWriter: that writer takes each tensor whole,
already quantized, and writes to a path of its own, while ours quantizes a few rows at a time
(a row of blocks is independent of the others, so the bytes equal the package's `quantize` of
the whole tensor) into the temporary file that write.py renames into place. The container is
small: magic, version 3, counts, key-value pairs, tensor infos (dimensions reversed, offsets
aligned to 32), then the data.

`for_gguf` turns a plan into what ComfyUI-GGUF's loader expects (city96's tools/convert.py):
the diffusion model alone with `model.diffusion_model.` stripped, `general.architecture` its
loader's word for the family (registry `gguf`), 1-D, small (<= 1024 values) and the family's
high-precision tensors in F32, SD-v1/SDXL tensors whose last dimension is not a multiple of
256 stored as [n/256, 256], tensors of more than 4 dimensions as 2-D, both with their shape in
`comfy.gguf.orig_shape.<name>`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO

from ..dtypes import DTYPES, DType
from ..errors import UsageError
from ..model import DEFAULT_CHUNK_BYTES, values
from ..plan import Plan, PlanEntry
from ..quantized import QuantizedRef, quantize
from .gguf import BY_TYPE, ORIG_SHAPE, PLAIN

if TYPE_CHECKING:
    import numpy as np

    from ..execute import Tap
    from .safetensors import Progress

ALIGNMENT = 32
SMALL = 1024  # tensors of at most this many values stay F32 (convert.py's threshold)
RESHAPE_MIN = 512
TYPE_NUMBER = {dtype.name: number for number, dtype in BY_TYPE.items()}
# llama.cpp's LlamaFileType for a file mostly of one type (general.file_type).
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "BF16": 32}
UINT32_KEYS = {"general.quantization_version", "general.file_type", "general.alignment"}
QUANTIZATION_VERSION = 2
PREFIXES = ("model.diffusion_model.",)
WHOLE_PREFIXES = ("net.",)  # stripped when every name has it (Anima's official file)


@dataclass(frozen=True)
class Reshaped:
    """A tensor seen in another shape with the same values in C order (the `Tensor` protocol):
    how a GGUF stores what its loader reshapes back."""

    inner: Any
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dtype(self) -> DType:
        return self.inner.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes

    def chunks(self, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Any]:
        return self.inner.chunks(max_bytes)


def for_gguf(plan: Plan) -> Plan:
    """The plan as ComfyUI-GGUF loads it (see the module's docstring). A plan already made
    for GGUF (one read from a GGUF file) comes out the same."""
    from ..analysis import analyze
    from ..architectures.registry import load_registry

    entries, dropped = _diffusion_model(plan.entries)
    stripped = Plan(entries, dict(plan.metadata), plan.origin)
    analysis = analyze(stripped, precision=None)
    registry = load_registry()
    arch = plan.metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        arch = next(
            (registry.gguf_arch[c] for c in analysis.components if c in registry.gguf_arch), None
        )
    if arch is None:
        found = analysis.architecture or "an unidentified model"
        raise UsageError(
            f"cannot write {found} as GGUF: ComfyUI-GGUF loads the diffusion models of "
            f"{', '.join(sorted(set(registry.gguf_arch.values())))}"
        )
    hiprec = registry.gguf_high_precision.get(arch, ())
    reshape = arch in registry.gguf_reshape
    metadata: dict[str, Any] = {
        key: value
        for key, value in plan.metadata.items()
        if not key.startswith(ORIG_SHAPE) and key not in UINT32_KEYS
    }
    metadata["general.architecture"] = arch
    out: list[PlanEntry] = []
    for entry in entries:
        entry, original = _stored(entry, hiprec, reshape)
        if original is not None:
            metadata[ORIG_SHAPE + entry.name] = list(original)
        out.append(entry)
    counts: dict[str, int] = {}
    for entry in out:
        counts[entry.dtype.name] = counts.get(entry.dtype.name, 0) + entry.nbytes
    main = max(counts, key=counts.__getitem__) if counts else "F32"
    metadata["general.quantization_version"] = QUANTIZATION_VERSION
    if main in FILE_TYPES:
        metadata["general.file_type"] = FILE_TYPES[main]
    warnings = list(plan.warnings)
    if dropped:
        warnings.append(
            f"a GGUF holds the diffusion model alone: {dropped} other tensors (text encoders, "
            "VAE, EMA and the like) are left out; extract the parts you need to their own files"
        )
    return Plan(out, metadata, plan.origin, warnings)


def _diffusion_model(entries: list[PlanEntry]) -> tuple[list[PlanEntry], int]:
    for prefix in PREFIXES:
        if any(e.name.startswith(prefix) for e in entries):
            kept = [e.renamed(e.name[len(prefix) :]) for e in entries if e.name.startswith(prefix)]
            return kept, len(entries) - len(kept)
    for prefix in WHOLE_PREFIXES:
        if entries and all(e.name.startswith(prefix) for e in entries):
            return [e.renamed(e.name[len(prefix) :]) for e in entries], 0
    return entries, 0


def _stored(
    entry: PlanEntry, hiprec: Sequence[str], reshape: bool
) -> tuple[PlanEntry, tuple[int, ...] | None]:
    """The entry in the type and shape the GGUF stores it, and its real shape if that differs."""
    shape, numel = entry.shape, entry.numel
    source, target = entry.reads.dtype, entry.dtype
    if isinstance(entry.reads, Reshaped):
        return entry, entry.reads.inner.shape  # made for GGUF already
    if target.quantized and target == source:  # a GGUF's blocks copied, as they are stored
        row = getattr(entry.reads, "row", shape[-1] if shape else 1)
        if not shape or row == shape[-1]:
            return entry, None
        stored = (numel // row, row)
        reshaped = PlanEntry(entry.name, Reshaped(entry.reads, stored), target, entry.transform)  # type: ignore[arg-type]
        return reshaped, shape
    if target.name not in TYPE_NUMBER:
        if target.name in ("F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"):
            target = DTYPES["F16"]  # GGUF has no fp8; fp16 holds its values exactly
        else:
            raise UsageError(f"GGUF cannot store {target.name} (tensor {entry.name!r})")
    wants_quality = len(shape) <= 1 or numel <= SMALL or any(k in entry.name for k in hiprec)
    if wants_quality and (target.quantized or source.name in ("F32", "BF16", "F64")):
        target = DTYPES["F32"] if target.is_float else target
    stored = shape
    if len(shape) > 4:
        stored = (shape[0], numel // shape[0])
    elif (
        reshape and len(shape) > 1 and numel >= RESHAPE_MIN and numel % 256 == 0 and shape[-1] % 256
    ):
        stored = (numel // 256, 256)
    if target.quantized and target.block and stored and stored[-1] % target.block[0]:
        target = DTYPES["F16"]  # rows of partial blocks: convert.py falls back to F16 too
    if stored == shape and target == entry.dtype:
        return entry, None
    reads = Reshaped(entry.reads, stored) if stored != shape else entry.reads
    planned = PlanEntry(entry.name, reads, target, entry.transform)  # type: ignore[arg-type]
    return planned, (shape if stored != shape else None)


def write(
    plan: Plan, out: BinaryIO, progress: Progress, chunk_bytes: int, taps: Sequence[Tap] = ()
) -> None:
    plan = for_gguf(plan)
    names = [entry.name for entry in plan.entries]
    if len(set(names)) != len(names):
        raise UsageError("the plan has duplicate tensor names")
    out.write(_header(plan))
    _pad(out)
    for entry in plan.entries:
        for raw in _encoded(entry, chunk_bytes):
            for tap in taps:
                tap.on_chunk(entry, raw)
            out.write(raw)
            progress(len(raw))
        for tap in taps:
            tap.on_done(entry)
        _pad(out)
    out.truncate()


def _pad(out: BinaryIO) -> None:
    out.write(b"\0" * (-out.tell() % ALIGNMENT))


def _header(plan: Plan) -> bytes:
    parts = [b"GGUF", struct.pack("<IQQ", 3, len(plan.entries), len(plan.metadata))]
    for key, value in plan.metadata.items():
        parts.append(_string(key) + _kv_value(key, value))
    offset = 0
    for entry in plan.entries:
        dims = list(reversed(entry.shape)) or [1]
        parts.append(_string(entry.name) + struct.pack("<I", len(dims)))
        parts.append(struct.pack(f"<{len(dims)}Q", *dims))
        parts.append(struct.pack("<IQ", TYPE_NUMBER[entry.dtype.name], offset))
        offset += entry.nbytes + (-entry.nbytes % ALIGNMENT)
    return b"".join(parts)


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


# GGUF value types (gguf-py's GGUFValueType)
UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, INT64 = 4, 5, 6, 7, 8, 9, 11


def _kv_value(key: str, value: Any) -> bytes:
    if key in UINT32_KEYS and isinstance(value, int):
        return struct.pack("<II", UINT32, value)
    if isinstance(value, list):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            kind = INT32 if all(-(2**31) <= v < 2**31 for v in value) else INT64
            form = "i" if kind == INT32 else "q"
            return struct.pack("<IIQ", ARRAY, kind, len(value)) + struct.pack(
                f"<{len(value)}{form}", *value
            )
        if all(isinstance(v, float | int) and not isinstance(v, bool) for v in value):
            return struct.pack("<IIQ", ARRAY, FLOAT32, len(value)) + struct.pack(
                f"<{len(value)}f", *value
            )
        return struct.pack("<IIQ", ARRAY, STRING, len(value)) + b"".join(
            _string(str(v)) for v in value
        )
    if isinstance(value, bool):
        return struct.pack("<IB", BOOL, value)
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return struct.pack("<Ii", INT32, value)
        return struct.pack("<Iq", INT64, value)
    if isinstance(value, float):
        return struct.pack("<If", FLOAT32, value)
    if not isinstance(value, str):
        import json

        value = json.dumps(value, default=str)
    return struct.pack("<I", STRING) + _string(value)


def _encoded(entry: PlanEntry, chunk_bytes: int) -> Iterator[np.ndarray]:
    """The entry's stored bytes, a few rows at a time."""
    import numpy as np

    reads, target = entry.reads, entry.dtype
    inner = reads.inner if isinstance(reads, Reshaped) else reads
    if isinstance(inner, QuantizedRef) and entry.is_copy:
        for _, job in inner.raw_chunks(chunk_bytes):
            yield job()
        return
    number = TYPE_NUMBER[target.name]
    if target.name not in ("F16", "BF16") and not target.quantized:
        for chunk in values(entry, chunk_bytes):  # F32 and the plain types: as they are
            yield np.ascontiguousarray(chunk).view(np.uint8)
        return
    # The gguf package's own F16/BF16 rounding and block quantizers, on float32 rows: chunks
    # of whole rows (a file tensor's chunks are runs of elements, sized here to rows), each
    # read, cast and quantized in a worker thread while this one writes.
    from ..execute import cast_threads, run_in_order

    row = entry.shape[-1] if entry.shape else 1
    rows_at_once = max(1, chunk_bytes // (row * 4))
    floats = PlanEntry(entry.name, reads, DTYPES["F32"], entry.transform)  # type: ignore[arg-type]
    chunks = list(floats.chunks(rows_at_once * row * 4))
    if all(count % row == 0 for count, _ in chunks):
        jobs = (partial(_quantized_rows, job, row, number) for _, job in chunks)
        yield from run_in_order(jobs, cast_threads())
        return
    pending: list[np.ndarray] = []  # chunks across rows (a strided view's): regrouped here
    held = 0
    for chunk in values(floats, chunk_bytes):
        pending.append(chunk)
        held += len(chunk)
        whole = held // row
        if whole >= rows_at_once:
            flat = np.concatenate(pending)
            cut = whole * row
            yield quantize(flat[:cut].reshape(whole, row), number)
            pending, held = [flat[cut:]], len(flat) - cut
    if held:
        flat = np.concatenate(pending)
        yield quantize(flat.reshape(-1, row), number)


def _quantized_rows(read: Callable[[], np.ndarray], row: int, number: int) -> np.ndarray:
    return quantize(read().reshape(-1, row), number)


assert set(PLAIN.values()) <= set(TYPE_NUMBER)
