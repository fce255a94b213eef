"""Block-quantized tensors (GGUF's Q8_0, Q4_K, IQ4_XS, ...): their bytes in the file, their
values decoded by the gguf package, row by row.

A GGUF tensor is stored as rows of blocks along its last dimension (ggml's first): a row is
independent of the others, so decoding a few rows at a time gives the values the package's
`dequantize` gives for the whole tensor, in bounded memory. Decoding is the gguf package's
(gguf-py, maintained beside llama.cpp): the bit patterns of every type are its business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from .dtypes import DType
from .model import DEFAULT_CHUNK_BYTES, SizedByDType
from .storage import Chunk, FileSpan

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class QuantizedRef(SizedByDType):
    """One quantized tensor of a GGUF file (the `Tensor` protocol): `shape` is the logical
    shape (torch order, `comfy.gguf.orig_shape` applied), `row` the elements of one stored
    row; `nbytes` what it takes in the file. Its values come out as float32."""

    name: str
    dtype: DType  # a quantized dtype (dtypes.QUANTIZED)
    shape: tuple[int, ...]
    storage: FileSpan
    row: int

    @property
    def row_bytes(self) -> int:
        return self.dtype.nbytes_for(self.row)

    def _rows_per_chunk(self, max_bytes: int) -> int:
        return max(1, max_bytes // (self.row * 4))  # sized by the decoded float32 values

    def chunks(self, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
        """Whole rows at a time, decoded in the job (so in worker threads)."""
        rows = self._rows_per_chunk(max_bytes)
        for count, read in self.storage.chunks(0, self.nbytes, rows * self.row_bytes):
            yield count // self.row_bytes * self.row, partial(self._decode, read)

    def raw_chunks(self, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
        """The stored bytes as they are (a GGUF copied into a GGUF)."""
        rows = self._rows_per_chunk(max_bytes)
        yield from self.storage.chunks(0, self.nbytes, rows * self.row_bytes)

    def _decode(self, read: Callable[[], np.ndarray]) -> np.ndarray:
        raw = read()
        return dequantize(raw.reshape(-1, self.row_bytes), self.dtype).reshape(-1)


def dequantize(raw: np.ndarray, dtype: DType) -> np.ndarray:
    """Rows of stored blocks (uint8, [rows, row bytes]) -> float32 values [rows, row]."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    assert dtype.gguf_type is not None
    if dtype.gguf_type == Q8_0 and _kernels is not None:  # the compiled loop: the same values
        out = np.empty((raw.shape[0], raw.shape[1] // 34 * 32), np.float32)
        _kernels.q8_0_decode(np.ascontiguousarray(raw), out)
        return out
    with np.errstate(all="ignore"):  # inf and NaN are values like any other here
        values = quants.dequantize(raw, GGMLQuantizationType(dtype.gguf_type))
    return values.astype(np.float32, copy=False)


Q8_0 = 8


def quantize(values: np.ndarray, gguf_type: int) -> np.ndarray:
    """float32 rows [rows, row] -> stored bytes (uint8) as the gguf package makes them (Q8_0
    by the compiled loop where it is built: the same bytes, ten times sooner)."""
    import numpy as np

    if gguf_type == Q8_0 and _kernels is not None:
        flat = np.ascontiguousarray(values, dtype=np.float32)
        out = np.empty(flat.size // 32 * 34, np.uint8)
        if _kernels.q8_0(flat, out) == 0:
            return out.reshape(*values.shape[:-1], values.shape[-1] // 32 * 34)
    return _package_quantize(values, gguf_type)


def _package_quantize(values: np.ndarray, gguf_type: int) -> np.ndarray:
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    with np.errstate(all="ignore"):
        encoded = quants.quantize(values, GGMLQuantizationType(gguf_type))
    return np.ascontiguousarray(encoded).view(np.uint8)


try:  # the optional compiled loops (_kernels.c)
    from . import _kernels
except ImportError:  # pragma: no cover - built wherever a C compiler is found
    _kernels = None  # type: ignore[assignment]
