"""Where a tensor's bytes are: a span of the file, a compressed zip entry, memory, or nowhere
(zeros). Four small types, one contract: each yields its bytes [start, start + length) as
uint8 arrays of `chunk` bytes (the last may be shorter), and can lend its whole run of bytes
for a strided view. What the bytes mean (dtype, shape, strides) is the TensorRef's business.

A chunk is a pair (length, job): the job returns the bytes. File spans read only when the job
runs, so that reads can run in worker threads beside the writing (pread takes no shared file
position); a zip entry can only be decompressed in order, so its jobs hand over bytes already
read. numpy is imported by the methods that make arrays: identifying a file needs none.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FormatError
from .text import printable

if TYPE_CHECKING:
    import numpy as np

Chunk = tuple[int, Callable[[], "np.ndarray"]]  # (bytes, the job that returns them as uint8)


class FileData:
    """An open model file: positional reads with `os.preadv` and one lazily created mmap.

    Chunked reads use preadv into a fresh buffer per chunk rather than the mmap: pages read
    through a mapping stay in the process's resident set until unmapped, which would make the
    peak RSS of a write grow with the model. The mmap serves whole-storage views (strided
    tensors) and work that only looks at values (the metric), which release their pages.
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
    def name(self) -> str:
        return self.path.name

    @property
    def mmap(self) -> mmap.mmap:
        if self._mmap is None:
            self._mmap = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
        return self._mmap

    def pread(self, length: int, offset: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise FormatError(f"{self.name} is truncated (wanted {length} bytes at {offset})")
        return data

    def preadinto(self, buffer: memoryview, offset: int) -> None:
        done = 0
        while done < len(buffer):
            got = os.preadv(self.fd, [buffer[done:]], offset + done)
            if got <= 0:
                raise FormatError(f"{self.name} is truncated at byte {offset + done}")
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
            # Arrays from whole() may still point into the mapping; it then lives until they go.
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class FileSpan:
    """Raw bytes in the file: safetensors data, a stored (uncompressed) zip entry, a legacy
    checkpoint's storage."""

    data: FileData
    offset: int  # of the storage's first byte in the file
    nbytes: int

    @property
    def where(self) -> str:
        return self.data.name

    def chunks(self, start: int, length: int, chunk: int) -> Iterator[Chunk]:
        position = self.offset + start
        for done in range(0, length, chunk):
            count = min(chunk, length - done)
            yield count, partial(self._read_at, position + done, count)

    def _read_at(self, position: int, count: int) -> np.ndarray:
        import numpy as np

        # A fresh buffer per chunk: chunks may be converted in other threads while the next
        # one is read, so none may be overwritten under them.
        buffer = np.empty(count, np.uint8)
        self.data.preadinto(memoryview(buffer), position)
        return buffer

    def mapped(self, start: int, count: int) -> np.ndarray:
        """Bytes [start, start + count) seen through the file's mapping, not copied; call
        `unmap` with the same span when done, so the pages leave our resident set."""
        import numpy as np

        return np.frombuffer(self.data.mmap, np.uint8, count, self.offset + start)

    def unmap(self, start: int, count: int) -> None:
        self.data.release(self.offset + start, self.offset + start + count)

    @contextlib.contextmanager
    def whole(self) -> Iterator[tuple[np.ndarray, Callable[[], None]]]:
        """All bytes of the storage, mapped, and a function that releases the pages read."""
        start, end = self.offset, self.offset + self.nbytes
        try:
            yield self.mapped(0, self.nbytes), partial(self.data.release, start, end)
        finally:
            self.data.release(start, end)


@dataclass(frozen=True)
class ZipMember:
    """A compressed entry of a torch zip, decompressed as a stream whenever it is read."""

    data: FileData
    member: str
    nbytes: int

    @property
    def where(self) -> str:
        return self.data.name

    def chunks(self, start: int, length: int, chunk: int) -> Iterator[Chunk]:
        import numpy as np

        pending = bytearray()
        for piece in self._stream(start, length, chunk):
            pending += piece
            while len(pending) >= chunk:
                block = np.frombuffer(pending[:chunk], np.uint8)  # the slice is a copy
                del pending[:chunk]
                yield chunk, partial(given, block)
        if pending:
            yield len(pending), partial(given, np.frombuffer(pending, np.uint8))

    def _stream(self, start: int, length: int, chunk: int) -> Iterator[bytes]:
        """Bytes [start, start+length) of the entry, decompressed as a stream.

        A bad CRC, a damaged deflate stream or a local header that disagrees with the central
        directory surface here, mid-write: they become FormatError like any other damage."""
        import zipfile  # a .ckpt's member, read where there is one

        name = self.data.name
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

    @contextlib.contextmanager
    def whole(self) -> Iterator[tuple[np.ndarray, Callable[[], None]]]:
        """The entry decompressed into an unlinked temporary file and mapped, so that a 4 GiB
        deflated storage costs disk, not memory; releasing drops the pages read so far."""
        import tempfile

        import numpy as np

        with tempfile.TemporaryFile() as spill:
            for piece in self._stream(0, self.nbytes, 1 << 24):
                spill.write(piece)
            spill.flush()
            mapping = mmap.mmap(spill.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                yield np.frombuffer(mapping, np.uint8, self.nbytes), partial(_drop, mapping)
            finally:
                with contextlib.suppress(BufferError):
                    mapping.close()


@dataclass(frozen=True)
class InMemory:
    """Values no file has (the demo model, rewritten position ids), so that plans can mix them
    with file tensors."""

    buffer: bytes

    where = "model"

    @property
    def nbytes(self) -> int:
        return len(self.buffer)

    def chunks(self, start: int, length: int, chunk: int) -> Iterator[Chunk]:
        import numpy as np

        values = np.frombuffer(self.buffer, np.uint8, length, start)
        for done in range(0, length, chunk):
            block = values[done : done + chunk]
            yield len(block), partial(given, block)

    @contextlib.contextmanager
    def whole(self) -> Iterator[tuple[np.ndarray, Callable[[], None]]]:
        import numpy as np

        yield np.frombuffer(self.buffer, np.uint8), _nothing


@dataclass(frozen=True)
class Zeros:
    """All zeros, held nowhere until read (the demo model's untrained weights)."""

    nbytes: int

    where = "model"

    def chunks(self, start: int, length: int, chunk: int) -> Iterator[Chunk]:
        import numpy as np

        for done in range(0, length, chunk):
            count = min(chunk, length - done)
            yield count, partial(np.zeros, count, np.uint8)

    @contextlib.contextmanager
    def whole(self) -> Iterator[tuple[np.ndarray, Callable[[], None]]]:
        import numpy as np

        yield np.zeros(self.nbytes, np.uint8), _nothing  # zero pages: no memory until touched


Storage = FileSpan | ZipMember | InMemory | Zeros


def given(values: np.ndarray) -> np.ndarray:
    """A chunk's job for values already at hand (read in order, or held in memory)."""
    return values


def _nothing() -> None:
    return None


def _drop(mapping: mmap.mmap) -> None:
    if hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_DONTNEED)
