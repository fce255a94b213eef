"""ModelFile and TensorRef, what `open()` returns: names, dtypes, shapes, and lazy data access.

Opening a file builds these from its header alone. Tensor bytes are read only through
`TensorRef.read()` or `TensorRef.iter_chunks()`, and a chunked read never holds more than one
chunk, so that a write of any size runs in bounded memory. numpy is imported by the methods
that touch values: identifying a file needs none, and starts ~0.2 s sooner without it.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .dtypes import DType
from .errors import FormatError
from .text import printable

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024  # large enough for few syscalls, small enough for caches


class FileData:
    """An open model file: positional reads with `os.preadv` and one lazily created mmap.

    Chunked reads use preadv into a fresh buffer per chunk rather than the mmap: pages read
    through a mapping stay in the process's resident set until unmapped, which would make the
    peak RSS of a write grow with the model. The mmap serves `read()`, which returns arrays
    backed by it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        self._mmap: mmap.mmap | None = None
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            info = os.fstat(self.fd)
        except OSError as exc:
            self.close()
            raise FormatError(f"cannot read {path}: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            self.close()
            raise FormatError(f"{path} is not a regular file")
        self.size = info.st_size

    @property
    def mmap(self) -> mmap.mmap:
        if self._mmap is None:
            self._mmap = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
        return self._mmap

    def pread(self, length: int, offset: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise FormatError(f"{self.path.name} is truncated (wanted {length} bytes at {offset})")
        return data

    def preadinto(self, buffer: memoryview, offset: int) -> None:
        done = 0
        while done < len(buffer):
            got = os.preadv(self.fd, [buffer[done:]], offset + done)
            if got <= 0:
                raise FormatError(f"{self.path.name} is truncated at byte {offset + done}")
            done += got

    def release(self, start: int, end: int) -> None:
        """Drop the mapped pages of [start, end) from our resident set (they stay in page cache)."""
        if self._mmap is None or end <= start:
            return
        page = mmap.PAGESIZE
        start -= start % page
        end = min(end, self.size)
        if hasattr(self._mmap, "madvise"):
            self._mmap.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        if self._mmap is not None:
            # Arrays from read() may still point into the mapping; it then lives until they go.
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class Storage:
    """A run of bytes holding a storage: raw in a file, an entry of a compressed zip, or memory.

    Memory storages hold values that no file has (the demo model, rewritten position ids), so
    that plans can mix them with file tensors.
    """

    data: FileData | None
    offset: int  # byte offset in the file (raw) or in the decompressed entry (zip member)
    nbytes: int
    member: str | None = None  # name of a compressed zip entry; None: raw bytes in the file
    buffer: bytes | None = None  # the bytes themselves, for a memory storage
    zero: bool = False  # all zeros, held nowhere (the demo model's untrained weights)

    def stream(self, start: int, length: int, chunk: int) -> Iterator[bytes]:
        """Bytes [start, start+length) of a compressed entry, decompressed as a stream.

        A bad CRC, a damaged deflate stream or a local header that disagrees with the central
        directory surface here, mid-write: they become FormatError like any other damage."""
        assert self.member is not None and self.data is not None
        name = self.data.path.name
        try:
            with zipfile.ZipFile(self.data.path) as archive, archive.open(self.member) as entry:

                def pieces(count: int) -> Iterator[bytes]:
                    while count:
                        got = entry.read(min(count, chunk))
                        if not got:
                            raise FormatError(f"{name}: {printable(self.member)} is truncated")
                        count -= len(got)
                        yield got

                for _ in pieces(start):  # decompress up to the start, keeping nothing
                    pass
                yield from pieces(length)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            detail = printable(str(exc) or exc.__class__.__name__, 200)
            raise FormatError(f"{name}: cannot read {printable(self.member)} ({detail})") from None


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
        return cls(name, dtype, tuple(array.shape), Storage(None, 0, len(raw), buffer=raw))

    @classmethod
    def zeros(cls, name: str, shape: tuple[int, ...], dtype: DType) -> TensorRef:
        """A tensor of zeros that costs no memory until read, chunk by chunk."""
        nbytes = math.prod(shape) * dtype.itemsize
        return cls(name, dtype, tuple(shape), Storage(None, 0, nbytes, zero=True))

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
        """Where the tensor's bytes lie in the file; None when they are compressed or strided."""
        if self.storage.data is None or self.storage.member is not None or not self.is_contiguous:
            return None
        start = self.storage.offset + self.storage_offset * self.dtype.itemsize
        return start, start + self.nbytes

    def _numpy_dtype(self) -> np.dtype:
        return self.dtype.numpy.newbyteorder(">") if self.big_endian else self.dtype.numpy

    def _native(self, array: np.ndarray) -> np.ndarray:
        return array.astype(self.dtype.numpy) if self.big_endian else array

    def read(self) -> np.ndarray:
        """The whole tensor as a numpy array (read-only view of the file where possible)."""
        import numpy as np

        if self.numel == 0:
            return np.zeros(self.shape, dtype=self.dtype.numpy)
        if self.storage.data is None or self.storage.member is not None or not self.is_contiguous:
            flat = np.concatenate([chunk.copy() for chunk in self.iter_chunks()])
            return flat.reshape(self.shape)
        start, _ = self.byte_range  # type: ignore[misc]
        array = np.frombuffer(self.storage.data.mmap, self._numpy_dtype(), self.numel, start)
        return self._native(array).reshape(self.shape)

    def iter_chunks(self, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[np.ndarray]:
        """The values in C order as 1-D arrays of at most `max_bytes` each (read-only for
        tensors held in memory). Memory use is one chunk, whatever the tensor's size."""
        for _, read in self.chunk_reads(max_bytes):
            yield read()

    def chunk_reads(
        self, max_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
        """Per chunk, its length and a function that returns its values.

        Raw file bytes are only read when the function is called, so that the reading itself
        can run in a worker thread, beside the writing (pread takes no shared position);
        everything else (zip members, strided views) is read here, in order."""
        import numpy as np

        if self.numel == 0:
            return
        itemsize = self.dtype.itemsize
        per_chunk = max(1, max_bytes // itemsize)
        if not self.is_contiguous:
            for block in self._strided_chunks(per_chunk):
                yield len(block), partial(_given, block)
            return
        start = self.storage_offset * itemsize
        if self.storage.zero:
            for first in range(0, self.numel, per_chunk):
                count = min(per_chunk, self.numel - first)
                yield count, partial(np.zeros, count, self.dtype.numpy)
            return
        if self.storage.buffer is not None:
            values = np.frombuffer(
                self.storage.buffer, self._numpy_dtype(), self.numel, self.storage.offset + start
            )
            for first in range(0, self.numel, per_chunk):
                block = self._native(values[first : first + per_chunk])
                yield len(block), partial(_given, block)
            return
        if self.storage.member is not None:
            pending = b""
            for piece in self.storage.stream(start, self.nbytes, per_chunk * itemsize):
                pending += piece
                usable = len(pending) - len(pending) % itemsize
                if usable:
                    block = self._native(np.frombuffer(pending[:usable], self._numpy_dtype()))
                    yield len(block), partial(_given, block)
                    pending = pending[usable:]
            return
        for position, count in self._file_spans(self.storage.offset + start, per_chunk):
            yield count, partial(self._read_at, position, count)

    def chunk_work(
        self, max_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> Iterator[tuple[int, Callable[[Callable[[np.ndarray], T]], T]]]:
        """Per chunk, its length and a function that runs some work on its values.

        For work that only looks at the values (a sum): raw file chunks are then not copied out
        of the page cache but seen through the file's mapping, and their pages leave our
        resident set after the work (else a 4 GiB read would count 4 GiB there)."""
        data = self.storage.data
        if data is None or self.byte_range is None or self.big_endian:
            for count, read in self.chunk_reads(max_bytes):
                yield count, partial(work_on_read, read)
            return
        data.mmap  # noqa: B018 - mapped here, once, rather than raced for by worker threads
        per_chunk = max(1, max_bytes // self.dtype.itemsize)
        for position, count in self._file_spans(self.byte_range[0], per_chunk):
            yield count, partial(self._work_on_mapped, position, count)

    def _file_spans(self, position: int, per_chunk: int) -> Iterator[tuple[int, int]]:
        """Where each chunk of a contiguous tensor starts in the file, and its length."""
        for first in range(0, self.numel, per_chunk):
            count = min(per_chunk, self.numel - first)
            yield position, count
            position += count * self.dtype.itemsize

    def _work_on_mapped(self, position: int, count: int, work: Callable[[np.ndarray], T]) -> T:
        import numpy as np

        assert self.storage.data is not None
        view = np.frombuffer(self.storage.data.mmap, self.dtype.numpy, count, position)
        try:
            return work(view)
        finally:
            del view
            self.storage.data.release(position, position + count * self.dtype.itemsize)

    def _read_at(self, position: int, count: int) -> np.ndarray:
        import numpy as np

        # A fresh buffer per chunk: chunks may be converted in other threads while the next
        # one is read, so none may be overwritten under them.
        assert self.storage.data is not None
        chunk = np.empty(count, self._numpy_dtype())
        self.storage.data.preadinto(memoryview(chunk.view(np.uint8)), position)
        return self._native(chunk)

    def _view_of(self, base: np.ndarray) -> np.ndarray:
        """The tensor as a strided view of its storage's elements (check_view bounded it)."""
        import numpy as np

        assert self.stride is not None
        return np.lib.stride_tricks.as_strided(
            base[self.storage_offset :],
            shape=self.shape,
            strides=tuple(step * self.dtype.itemsize for step in self.stride),
            writeable=False,
        )

    def _strided_compressed_chunks(self, per_chunk: int) -> Iterator[np.ndarray]:
        """A strided view of a compressed storage: the storage is decompressed into a temporary
        file, and the view gathered from its mapping (pages released as we go), so that a
        4 GiB deflated storage costs disk, not memory."""
        import numpy as np

        assert self.stride is not None
        itemsize = self.dtype.itemsize
        with _spill(self.storage) as spill:
            mapping = mmap.mmap(spill.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                base = np.frombuffer(mapping, self._numpy_dtype(), self.storage.nbytes // itemsize)
                view = self._view_of(base)
                for block in _contiguous_blocks(view, per_chunk):
                    yield self._native(block)
                    if hasattr(mapping, "madvise"):
                        mapping.madvise(mmap.MADV_DONTNEED)
                del view, base
            finally:
                with contextlib.suppress(BufferError):
                    mapping.close()

    def _strided_chunks(self, per_chunk: int) -> Iterator[np.ndarray]:
        """Non-contiguous views (a saved `.t()` or slice): gather rows from the whole storage."""
        import numpy as np

        itemsize = self.dtype.itemsize
        assert self.stride is not None
        if self.storage.buffer is not None:
            base = np.frombuffer(self.storage.buffer, self._numpy_dtype())
        elif self.storage.member is not None:
            yield from self._strided_compressed_chunks(per_chunk)
            return
        else:
            assert self.storage.data is not None
            count = self.storage.nbytes // itemsize
            base = np.frombuffer(
                self.storage.data.mmap, self._numpy_dtype(), count, self.storage.offset
            )
        view = self._view_of(base)
        for block in _contiguous_blocks(view, per_chunk):
            yield self._native(block)
        if self.storage.data is not None and self.storage.member is None:
            start = self.storage.offset
            self.storage.data.release(start, start + self.storage.nbytes)


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
    name = ref.storage.data.path.name if ref.storage.data is not None else "model"
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


def _spill(storage: Storage) -> tempfile._TemporaryFileWrapper[bytes]:
    """A compressed storage decompressed into an unlinked temporary file, chunk by chunk."""
    spill = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the caller
    for piece in storage.stream(0, storage.nbytes, 1 << 24):
        spill.write(piece)
    spill.flush()
    return spill


def work_on_read(read: Callable[[], np.ndarray], work: Callable[[np.ndarray], T]) -> T:
    """Run `work` on the values `read` returns: chunk_work's form for chunks that are copied."""
    return work(read())


def _given(values: np.ndarray) -> np.ndarray:
    return values


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

    def close(self) -> None:
        if self._data is not None:
            self._data.close()

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
