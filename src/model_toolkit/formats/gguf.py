"""GGUF files (city96's ComfyUI-GGUF, stable-diffusion.cpp, llama.cpp): read with the gguf
package's GGUFReader, header only; written by our own streaming writer (gguf_writer.py).

The reader maps the file and parses its key-value metadata and tensor infos; no tensor byte is
read. Each tensor becomes a TensorRef (F32, F16, BF16 and the integer types: plain arrays) or a
QuantizedRef (the block types), over our own FileData, with its shape in torch order: GGUF
stores dimensions reversed, and ComfyUI-GGUF's reshaped tensors (SD-v1/SDXL convolutions,
5-D video patch embeddings) carry their real shape in `comfy.gguf.orig_shape.<name>`. Every
check a lying header could defeat is made here, and any error of the package's becomes one
FormatError line.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

from ..dtypes import DTYPES, QUANTIZED, DType
from ..errors import FormatError
from ..model import ModelFile, TensorRef
from ..quantized import QuantizedRef
from ..storage import FileData, FileSpan
from ..text import printable

MAGIC = b"GGUF"
ORIG_SHAPE = "comfy.gguf.orig_shape."
# GGUF's plain element types, by type number, as the safetensors names of DTYPES.
PLAIN = {0: "F32", 1: "F16", 30: "BF16", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64"}
BY_TYPE: dict[int, DType] = {number: DTYPES[name] for number, name in PLAIN.items()}
BY_TYPE.update({row.gguf_type: row for row in QUANTIZED.values() if row.gguf_type is not None})
# The smallest a key-value pair (key length, a 1-byte key, type, a 1-byte value) and a tensor
# info (name length, a 1-byte name, dims, one dim, type, offset) can be: counts above what the
# file could hold are refused before the package loops over them.
MIN_KV_BYTES = 8 + 1 + 4 + 1
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8
ARRAY_SHOWN = 1024  # longer metadata arrays (a tokenizer's vocabulary) are summarized


def looks_like(prefix: bytes) -> bool:
    return prefix[:4] == MAGIC


def read(path: Path, data: FileData) -> ModelFile:
    """Open a GGUF file: its tensors and metadata, from the header."""
    _check_counts(data, path.name)
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        fields = dict(reader.fields)
        infos = [
            (t.name, int(t.tensor_type), [int(d) for d in t.shape], int(t.data_offset))
            for t in reader.tensors
        ]
    except FormatError:
        raise
    except Exception as exc:  # the package's errors are many: each becomes one line
        _diagnose(data, path.name)  # says what is wrong in our words, where it can
        raise FormatError(f"{path.name} is not a readable GGUF file: {_reason(exc)}") from None
    finally:
        reader = None  # the package's own mapping goes; ours reads the tensors
    shapes = _original_shapes(fields, path.name)
    metadata = {
        name: _value(field)
        for name, field in fields.items()
        if not name.startswith(("GGUF.", ORIG_SHAPE))
    }
    tensors: dict[str, TensorRef | QuantizedRef] = {}
    for name, number, dims, offset in infos:
        if name in tensors:
            raise FormatError(f"{path.name}: tensor {printable(name, 200)} appears twice")
        tensors[name] = _tensor(data, path.name, name, number, dims, offset, shapes.get(name))
    return ModelFile(path, "gguf", tensors, metadata, data)  # type: ignore[arg-type]


def _check_counts(data: FileData, name: str) -> None:
    if data.size < 24:
        raise FormatError(f"{name} is truncated (a GGUF header has 24 bytes)")
    version, tensors, kvs = struct.unpack("<IQQ", data.pread(20, 4))
    if version not in (2, 3):
        raise FormatError(f"{name}: GGUF version {version} is not supported (2 and 3 are)")
    if tensors * MIN_TENSOR_INFO_BYTES > data.size or kvs * MIN_KV_BYTES > data.size:
        raise FormatError(
            f"{name}: the header declares {tensors} tensors and {kvs} metadata entries, "
            f"more than its {data.size} bytes can hold"
        )


def _tensor(
    data: FileData,
    file: str,
    name: str,
    number: int,
    dims: list[int],
    offset: int,
    original: tuple[int, ...] | None,
) -> TensorRef | QuantizedRef:
    label = printable(name, 200)
    dtype = BY_TYPE.get(number)
    if dtype is None:
        raise FormatError(f"{file}: tensor {label} has an unknown GGUF type {number}")
    stored = tuple(reversed(dims))  # torch order
    numel = math.prod(stored)
    shape = stored
    if original is not None:
        if math.prod(original) != numel:
            raise FormatError(
                f"{file}: tensor {label} is stored as {list(stored)}, which "
                f"comfy.gguf.orig_shape {list(original)} does not fit"
            )
        shape = original
    if dtype.block is not None and dims and dims[0] % dtype.block[0]:
        raise FormatError(
            f"{file}: tensor {label} rows of {dims[0]} are not whole {dtype.name} blocks"
        )
    nbytes = dtype.nbytes_for(numel)
    if offset < 0 or offset + nbytes > data.size:
        raise FormatError(
            f"{file}: tensor {label} ({nbytes} bytes at {offset}) reaches past the end of the "
            f"file ({data.size} bytes): truncated, or a lying offset"
        )
    span = FileSpan(data, offset, nbytes)
    if dtype.block is None:
        return TensorRef(name, dtype, shape, span)
    return QuantizedRef(name, dtype, shape, span, dims[0] if dims else 1)


def _original_shapes(fields: dict[str, Any], file: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for key, field in fields.items():
        if not key.startswith(ORIG_SHAPE):
            continue
        value = _value(field)
        if not isinstance(value, list) or not all(isinstance(d, int) and d >= 0 for d in value):
            raise FormatError(f"{file}: {printable(key, 200)} is not a list of sizes")
        shapes[key[len(ORIG_SHAPE) :]] = tuple(value)
    return shapes


def _value(field: Any) -> Any:
    """A metadata field as plain data: a number, a string, or a list of them."""
    from gguf import GGUFValueType

    def one(index: int, kind: GGUFValueType) -> Any:
        part = field.parts[index]
        if kind == GGUFValueType.STRING:
            return bytes(part).decode("utf-8", "replace")
        return part[0].item()

    if not field.types:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        kind = field.types[-1] if len(field.types) > 1 else GGUFValueType.UINT8
        if len(field.data) > ARRAY_SHOWN:
            return f"<{len(field.data)} values of {kind.name.lower()}>"
        return [one(i, kind) for i in field.data]
    return one(field.data[0], field.types[0])


# Sizes of GGUF's scalar value types (gguf-py's GGUFValueType): 8 is a string, 9 an array.
SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class _Found(Exception):
    """What _diagnose found wrong, on its way out of the walk."""


def _diagnose(data: FileData, file: str) -> None:
    """Walk the header as the format defines it (no arrays built) and raise the FormatError
    that says what is wrong: a tensor of an unknown type, or past the end of the file. Returns
    when it finds nothing the package's own message does not say better."""
    position = 24
    alignment = 32
    _, tensors, kvs = struct.unpack("<IQQ", data.pread(20, 4))
    try:

        def take(size: int) -> bytes:
            nonlocal position
            raw = data.pread(size, position)
            position += size
            return raw

        def string() -> str:
            (length,) = struct.unpack("<Q", take(8))
            return take(length).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind == 8:
                string()
            elif kind == 9:
                inner, count = struct.unpack("<IQ", take(12))
                if count > data.size - position:  # each element takes a byte at least
                    raise _Found(
                        f"{file}: a metadata array declares {count} values, "
                        "more than the file holds"
                    )
                for _ in range(count):
                    skip(inner)
            else:
                take(SCALAR_BYTES[kind])

        for _ in range(kvs):
            key = string()
            (kind,) = struct.unpack("<I", take(4))
            if key == "general.alignment" and kind == 4:
                (alignment,) = struct.unpack("<I", take(4))
            else:
                skip(kind)
        infos = []
        for _ in range(tensors):
            name = string()
            (dims,) = struct.unpack("<I", take(4))
            shape = struct.unpack(f"<{dims}Q", take(8 * dims))
            number, offset = struct.unpack("<IQ", take(12))
            infos.append((name, number, list(shape), offset))
    except _Found as found:
        raise FormatError(str(found)) from None
    except (FormatError, KeyError, struct.error, OverflowError, MemoryError):
        return
    start = position + (-position % max(alignment, 1))
    for name, number, shape, offset in infos:
        _tensor(data, file, name, number, shape, start + offset, None)


def _reason(exc: Exception) -> str:
    text = printable(str(exc), 160) or type(exc).__name__
    return text[0].lower() + text[1:] if text else type(exc).__name__
