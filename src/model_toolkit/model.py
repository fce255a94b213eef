"""ModelFile and TensorRef, what `open()` returns: names, dtypes, shapes, and lazy data access.

Opening a file builds these from its header alone. Tensor bytes are read only through
`chunks()` (the `Tensor` protocol, which plan entries share), and a chunked read never holds
more than one chunk, so that a write of any size runs in bounded memory. Where the bytes are
is the storage's business (storage.py). numpy is imported by the methods that touch values:
identifying a file needs none, and starts ~0.2 s sooner without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .dtypes import DType
from .errors import FormatError
from .storage import Chunk, FileData, FileSpan, InMemory, Storage, Zeros, given
from .text import printable

if TYPE_CHECKING:
    import numpy as np

    from .plan import PlanEntry

T = TypeVar("T")

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024  # large enough for few syscalls, small enough for caches


class Tensor(Protocol):
    """What every tensor offers, in a file (TensorRef) or planned for an output (PlanEntry):
    a name, a dtype, a shape, a size, and its values in C order, chunk by chunk."""

    name: str
    dtype: DType

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def numel(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    def chunks(self, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
        """Per chunk, its element count and the job that returns its values as a 1-D array.

        Jobs run in any thread; the caller runs them in order or hands them to workers. Memory
        use is one chunk per job in flight, whatever the tensor's size."""
        ...


class SizedByDType:
    """`numel` and `nbytes` from a tensor's `shape` and `dtype` (whole blocks for a quantized
    dtype): what plan entries and a GGUF's quantized tensors take, output or on disk."""

    shape: tuple[int, ...]
    dtype: DType

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.dtype.nbytes_for(self.numel)


def values(tensor: Tensor, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[np.ndarray]:
    """The tensor's values in C order, chunk by chunk, read in this thread."""
    for _, job in tensor.chunks(max_bytes):
        yield job()


def read_all(tensor: Tensor) -> np.ndarray:
    """The whole tensor as one array, for the small tensors whose values are looked at (position
    ids, a v-prediction marker) and for tests."""
    import numpy as np

    parts = list(values(tensor))  # concatenate copies: nothing stays a view of a file
    flat = np.concatenate(parts) if parts else np.zeros(0, tensor.dtype.numpy)
    return flat.astype(tensor.dtype.numpy, copy=False).reshape(tensor.shape)


def chunk_work(
    tensor: Tensor, max_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[tuple[int, Callable[[Callable[[np.ndarray], T]], T]]]:
    """Per chunk, its element count and a function that runs some work on its values.

    For work that only looks at the values (a sum): a file tensor's raw chunks are then not
    copied out of the page cache but seen through the file's mapping, and their pages leave our
    resident set after the work (else a 4 GiB read would count 4 GiB there). Anything else
    (computed plan values, compressed or strided storages) is read as `chunks` reads it."""
    if isinstance(tensor, TensorRef) and tensor.mappable:
        yield from tensor.mapped_chunks(max_bytes)
        return
    for count, job in tensor.chunks(max_bytes):
        yield count, partial(work_on_read, job)


def work_on_read(read: Callable[[], np.ndarray], work: Callable[[np.ndarray], T]) -> T:
    """Run `work` on the values `read` returns: chunk_work's form for chunks that are copied."""
    return work(read())


@dataclass(frozen=True)
class TensorRef:
    """One tensor of a file: everything about it but its values, which are read on demand.

    `storage_offset` and `stride` are in elements, as torch counts them. Safetensors tensors are
    always contiguous with offset 0 in their own storage.
    """

    name: str
    dtype: DType
    shape: tuple[int, ...]
    storage: Storage
    storage_offset: int = 0
    stride: tuple[int, ...] | None = None  # None: C-contiguous
    big_endian: bool = False

    def __post_init__(self) -> None:
        check_view(self)

    @classmethod
    def from_array(cls, name: str, array: np.ndarray, dtype: DType) -> TensorRef:
        """A tensor whose values are held in memory rather than in a file."""
        import numpy as np

        raw = np.ascontiguousarray(array, dtype=dtype.numpy).tobytes()
        return cls(name, dtype, tuple(array.shape), InMemory(raw))

    @classmethod
    def zeros(cls, name: str, shape: tuple[int, ...], dtype: DType) -> TensorRef:
        """A tensor of zeros that costs no memory until read, chunk by chunk."""
        return cls(name, dtype, tuple(shape), Zeros(math.prod(shape) * dtype.itemsize))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def is_contiguous(self) -> bool:
        if self.stride is None:
            return True
        expected = 1
        for size, step in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and step != expected:
                return False
            expected *= size
        return True

    @property
    def byte_range(self) -> tuple[int, int] | None:
        """Where the tensor's bytes lie in the file; None when they are compressed, strided or
        in no file."""
        if not isinstance(self.storage, FileSpan) or not self.is_contiguous:
            return None
        start = self.storage.offset + self.storage_offset * self.dtype.itemsize
        return start, start + self.nbytes

    @property
    def mappable(self) -> bool:
        """Its values can be looked at in the file's mapping as they are (chunk_work)."""
        return self.byte_range is not None and not self.big_endian

    def read(self) -> np.ndarray:
        """The whole tensor as a numpy array: a read-only view of the file's mapping where its
        bytes lie there as they are, else a copy (the API's convenience; inside the package,
        read_all takes any Tensor)."""

        if self.mappable and self.numel:
            assert isinstance(self.storage, FileSpan)
            start = self.storage_offset * self.dtype.itemsize
            raw = self.storage.mapped(start, self.nbytes)
            return raw.view(self.dtype.numpy).reshape(self.shape)
        return read_all(self)

    def _numpy_dtype(self) -> np.dtype:
        return self.dtype.numpy.newbyteorder(">") if self.big_endian else self.dtype.numpy

    def _typed(self, job: Callable[[], np.ndarray]) -> np.ndarray:
        """A chunk's bytes as values of the tensor's dtype, in native byte order."""
        array = job().view(self._numpy_dtype())
        return array.astype(self.dtype.numpy) if self.big_endian else array

    def chunks(self, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
        if self.numel == 0:
            return
        itemsize = self.dtype.itemsize
        per_chunk = max(1, max_bytes // itemsize)
        if not self.is_contiguous:
            for block in self._strided_chunks(per_chunk):
                yield len(block), partial(given, block)
            return
        start = self.storage_offset * itemsize
        for nbytes, job in self.storage.chunks(start, self.nbytes, per_chunk * itemsize):
            yield nbytes // itemsize, partial(self._typed, job)

    def mapped_chunks(
        self, max_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> Iterator[tuple[int, Callable[[Callable[[np.ndarray], T]], T]]]:
        """chunk_work for a tensor that is `mappable`."""
        assert isinstance(self.storage, FileSpan) and self.mappable
        self.storage.data.mmap  # noqa: B018 - mapped here, once, not raced for by worker threads
        per_chunk = max(1, max_bytes // self.dtype.itemsize)
        start = self.storage_offset * self.dtype.itemsize
        for first in range(0, self.numel, per_chunk):
            count = min(per_chunk, self.numel - first)
            span = (start + first * self.dtype.itemsize, count * self.dtype.itemsize)
            yield count, partial(self._work_on_mapped, span)

    def _work_on_mapped(self, span: tuple[int, int], work: Callable[[np.ndarray], T]) -> T:
        assert isinstance(self.storage, FileSpan)
        view = self.storage.mapped(*span).view(self.dtype.numpy)
        try:
            return work(view)
        finally:
            del view
            self.storage.unmap(*span)

    def _strided_chunks(self, per_chunk: int) -> Iterator[np.ndarray]:
        """Non-contiguous views (a saved `.t()` or slice): gathered from the whole storage,
        as the storage lends it (mapped, or spilled to disk), releasing pages as it goes."""
        import numpy as np

        assert self.stride is not None
        itemsize = self.dtype.itemsize
        with self.storage.whole() as (raw, release):
            usable = len(raw) - len(raw) % itemsize
            base = raw[:usable].view(self._numpy_dtype())
            view = np.lib.stride_tricks.as_strided(
                base[self.storage_offset :],
                shape=self.shape,
                strides=tuple(step * itemsize for step in self.stride),
                writeable=False,
            )
            for block in _contiguous_blocks(view, per_chunk):
                yield block.astype(self.dtype.numpy) if self.big_endian else block
                release()
            del view, base, raw


# An overlapping view (stride 0, as `expand()` saves) may hold more elements than its storage,
# but not by more than this: a few real bytes must not become terabytes of output.
MAX_OVERLAP_BYTES = 16 * 1024 * 1024


def last_element(offset: int, shape: tuple[int, ...], stride: tuple[int, ...] | None) -> int:
    """The storage index of a non-empty view's last element (C-contiguous when no stride)."""
    if stride is None:
        return offset + math.prod(shape) - 1
    return offset + sum((size - 1) * step for size, step in zip(shape, stride, strict=True))


def check_view(ref: TensorRef) -> None:
    """Refuse a tensor whose elements are not all inside the real bytes of its storage.

    Every format reader builds TensorRefs, so this is the one check that a view cannot reach
    other memory (torch's storage-size CVEs), whatever the pickle claimed the storage holds."""
    name = ref.storage.where
    if math.prod(d for d in ref.shape if d) * ref.dtype.itemsize >= 1 << 63:
        # Even an empty tensor of such a shape is past what numpy (or torch) can describe.
        raise FormatError(f"{name}: tensor {printable(ref.name, 200)} has an impossible shape")
    if not all(ref.shape):
        return
    available = ref.storage.nbytes // ref.dtype.itemsize
    last = last_element(ref.storage_offset, ref.shape, ref.stride)
    if last >= available:
        raise FormatError(
            f"{name}: tensor {printable(ref.name, 200)} of shape {list(ref.shape)} reaches "
            f"element {last} of a storage of {available}"
        )
    if ref.numel > available and ref.nbytes > MAX_OVERLAP_BYTES:
        raise FormatError(
            f"{name}: tensor {printable(ref.name, 200)} of shape {list(ref.shape)} repeats "
            f"a storage of {available} elements {ref.numel // max(available, 1)}x over"
        )


def _contiguous_blocks(view: np.ndarray, per_chunk: int) -> Iterator[np.ndarray]:
    """Copy a strided view out in C order, at most `per_chunk` elements at a time."""
    import numpy as np

    if view.ndim == 0:
        yield np.array(view).reshape(1)
        return
    row = math.prod(view.shape[1:])
    if row <= per_chunk or view.ndim == 1:
        step = max(1, per_chunk // max(row, 1))
        for first in range(0, view.shape[0], step):
            yield np.ascontiguousarray(view[first : first + step]).reshape(-1)
        return
    for index in range(view.shape[0]):
        yield from _contiguous_blocks(view[index], per_chunk)


class Source(Protocol):
    """What operations and `analyze` take: an opened file (ModelFile) or the output of another
    operation (Plan), so that operations compose without reading a tensor. Both offer the
    same attributes, so no code asks which one it has."""

    format: str  # "safetensors", "torch-zip", "torch-legacy", or "plan"
    metadata: dict[str, Any]

    @property
    def tensors(self) -> Mapping[str, Tensor]: ...

    @property
    def entries(self) -> list[PlanEntry]: ...

    @property
    def origin(self) -> str: ...


@dataclass
class ModelFile:
    """An opened model file: its tensors by name and its metadata, nothing read beyond headers.

    `metadata` is the safetensors `__metadata__` (str -> str), or a checkpoint's non-tensor
    entries as plain, inert data (numbers, strings, lists, dicts).
    """

    path: Path
    format: str  # "safetensors", "torch-zip" or "torch-legacy"
    tensors: Mapping[str, TensorRef]
    metadata: dict[str, Any] = field(default_factory=dict)
    _data: FileData | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return sum(ref.nbytes for ref in self.tensors.values())

    @property
    def origin(self) -> str:
        """The file, as a Plan names the file it mostly comes from (see Source)."""
        return str(self.path)

    @property
    def entries(self) -> list[PlanEntry]:
        """Every tensor as a plan entry that copies it: the file as a plan (see Source)."""
        from .plan import PlanEntry  # numpy: only operations ask for entries

        return [PlanEntry(name, ref, ref.dtype) for name, ref in self.tensors.items()]

    def close(self) -> None:
        if self._data is not None:
            self._data.close()

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
