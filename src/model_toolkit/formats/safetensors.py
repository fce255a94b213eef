"""The safetensors format: a validating header parser and a streaming writer.

Layout: 8-byte little-endian header length N, N bytes of JSON header, then the data section.
We parse the header ourselves (rather than through the safetensors library) because opening must
not map or read the data, and every inconsistency must become one clear error.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..dtypes import DTYPES
from ..errors import FormatError, UsageError
from ..model import ModelFile, TensorRef
from ..storage import FileData, FileSpan

if TYPE_CHECKING:
    import numpy as np

    from ..execute import Tap
    from ..plan import Plan

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the safetensors library itself enforces
MAX_TENSORS = 200_000  # the largest real files have ~10k (a LyCORIS of SDXL); see torch_common
ALIGNMENT = 8  # the header is padded with spaces so that the data section starts aligned

Progress = Callable[[int], None]


def looks_like(prefix: bytes) -> bool:
    """Whether the first bytes of a file are a safetensors header (length, then a JSON object)."""
    return len(prefix) >= 9 and prefix[8:9] == b"{"


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise FormatError(f"duplicate key {key!r} in the header")
        result[key] = value
    return result


def parse_header(raw: bytes, data_size: int) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Validate a JSON header against a data section of `data_size` bytes.

    Returns the tensor entries in file order and the `__metadata__`. Raises FormatError, with a
    message that says what is wrong, for anything the safetensors library would refuse.
    """
    # Each tensor entry costs ~1 KiB in Python objects: count them before parsing, so that a
    # 99 MiB header of 1.8 M tensors is refused in milliseconds, not after 100 s and 1.8 GiB.
    tensors = raw.count(b'"data_offsets"')
    if tensors > MAX_TENSORS:
        raise FormatError(f"header lists {tensors:,} tensors (limit {MAX_TENSORS:,})")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"header is not valid JSON ({exc.__class__.__name__})") from None
    except ValueError:  # an integer beyond Python's 4300-digit limit
        raise FormatError("header has a number too long to read") from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise FormatError("__metadata__ must map strings to strings")
    entries: list[tuple[int, int, str, dict[str, Any]]] = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"tensor {name!r}: entry must have dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise FormatError(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise FormatError(f"tensor {name!r}: shape must be a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise FormatError(
                f"tensor {name!r}: data_offsets must be [begin, end] with begin <= end"
            )
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != expected:
            raise FormatError(
                f"tensor {name!r}: shape {shape} of {dtype} needs {expected} bytes, "
                f"data_offsets give {offsets[1] - offsets[0]}"
            )
        entries.append((offsets[0], offsets[1], name, info))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    position = 0
    for begin, end, name, _ in entries:
        if begin != position:
            problem = "overlaps the tensor before it" if begin < position else "leaves a gap"
            raise FormatError(f"tensor {name!r}: data_offsets {begin}..{end} {problem}")
        position = end
    if position != data_size:
        raise FormatError(
            f"data section is {data_size} bytes but the tensors cover {position}"
            + (" (file truncated?)" if position > data_size else "")
        )
    return {name: info for _, _, name, info in entries}, metadata


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


def read(path: Path, data: FileData) -> ModelFile:
    """Open a safetensors file: read and validate its header, map nothing."""
    if data.size < 8:
        raise FormatError(f"{path.name} is too short to be a safetensors file ({data.size} bytes)")
    (length,) = struct.unpack("<Q", data.pread(8, 0))
    if length > min(MAX_HEADER_BYTES, data.size - 8):
        raise FormatError(
            f"{path.name}: header length {length} is larger than "
            + ("the file" if length > data.size - 8 else "the 100 MiB limit")
        )
    try:
        entries, metadata = parse_header(data.pread(length, 8), data.size - 8 - length)
    except FormatError as exc:
        raise FormatError(f"{path.name}: {exc}") from None
    base = 8 + length
    tensors = {}
    for name, info in entries.items():
        begin, end = info["data_offsets"]
        storage = FileSpan(data, base + begin, end - begin)
        tensors[name] = TensorRef(name, DTYPES[info["dtype"]], tuple(info["shape"]), storage)
    return ModelFile(path, "safetensors", tensors, dict(metadata), data)


def metadata_as_strings(metadata: dict[str, Any]) -> dict[str, str]:
    """safetensors metadata is str -> str: other values are stored as JSON."""
    return {
        str(key): value if isinstance(value, str) else json.dumps(value, default=str)
        for key, value in metadata.items()
    }


def header_bytes(plan: Plan) -> bytes:
    """The length prefix and JSON header for a plan, padded so the data starts aligned."""
    header: dict[str, Any] = {}
    from ..plan import refuse_quantized

    refuse_quantized(plan, "safetensors")
    for entry in plan.entries:
        if entry.dtype.name not in DTYPES:  # complex128: readable from checkpoints only
            raise UsageError(
                f"safetensors cannot store {entry.dtype.torch_name} "
                f"(tensor {entry.name!r}); write a .ckpt instead"
            )
    metadata = metadata_as_strings(plan.metadata)
    if metadata:
        header["__metadata__"] = metadata
    position = 0
    for entry in plan.entries:
        header[entry.name] = {
            "dtype": entry.dtype.name,
            "shape": list(entry.shape),
            "data_offsets": [position, position + entry.nbytes],
        }
        position += entry.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % ALIGNMENT)
    return struct.pack("<Q", len(raw)) + raw


def _all_zero(raw: np.ndarray) -> bool:
    """Weights almost never start with 4 KiB of zeros, so that look usually decides."""
    return not raw[:4096].any() and not raw.any()


def write(
    plan: Plan, out: BinaryIO, progress: Progress, chunk_bytes: int, taps: Sequence[Tap] = ()
) -> None:
    """Header first (every size is known from the plan), then each tensor chunk by chunk."""
    names = [entry.name for entry in plan.entries]
    if len(set(names)) != len(names):
        raise FormatError("the plan has duplicate tensor names")
    out.write(header_bytes(plan))
    from ..execute import output_chunks  # writing only: identifying needs no threads

    for chunk in output_chunks(plan, chunk_bytes, taps=taps):
        raw = chunk.view("uint8")
        if not _all_zero(raw):
            out.write(raw)
        else:
            # All-zero bytes become a hole: the file reads back the same, and a sparse input
            # (or a model full of zero tensors) does not cost its size in writes.
            out.seek(len(raw), os.SEEK_CUR)
        progress(chunk.nbytes)
    out.truncate()  # the file ends where the data ends, even after a trailing hole
