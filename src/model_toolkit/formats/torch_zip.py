"""Torch zip checkpoints (`torch.save` since 1.6): `<archive>/data.pkl` plus one entry per storage.

Reading parses the zip's central directory and data.pkl (through the allow-list unpickler) and
nothing else: each storage is located by its local header, and its bytes are read on demand.
Writing uses the standard zipfile module for the container and our own pickle emitter for
data.pkl, so that the files load in `torch.load(weights_only=True)` and `torch.load(mmap=True)`.
"""

from __future__ import annotations

import hashlib
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import FormatError
from ..execute import Tap, output_chunks
from ..model import ModelFile, TensorRef
from ..storage import FileData, FileSpan, Storage, ZipMember
from ..text import printable
from . import pickle_writer, unpickler
from .torch_common import MAX_PICKLE_BYTES, split_checkpoint

if TYPE_CHECKING:
    import numpy as np

    from ..plan import Plan

STORAGE_ALIGNMENT = 64  # torch aligns every storage record so that mmap loading works
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
# Deflate cannot pass ~1032:1; bzip2 and lzma can, but no model's bytes compress that far.
MAX_COMPRESSION_RATIO = 1100
_SUPPORTED_COMPRESSION = {
    zipfile.ZIP_STORED,
    zipfile.ZIP_DEFLATED,
    zipfile.ZIP_BZIP2,
    zipfile.ZIP_LZMA,
}


def _data_pickles(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [
        info
        for info in archive.infolist()
        if info.filename == "data.pkl"
        or (info.filename.endswith("/data.pkl") and info.filename.count("/") == 1)
    ]


def scan_pickle_members(
    archive: zipfile.ZipFile, name: str, skip: zipfile.ZipInfo | None = None
) -> None:
    """Name what any pickle member a loader could run would call (every `*.pkl`, a second
    data.pkl included), but `skip`: the data.pkl that `read` unpickles, walked there once."""
    for info in archive.infolist():
        if info is skip or not info.filename.endswith(".pkl") or info.file_size > MAX_PICKLE_BYTES:
            continue
        try:
            with archive.open(info) as entry:
                raw = entry.read(MAX_PICKLE_BYTES + 1)
        except Exception:  # any damage: the reader reports it, not this scan
            continue
        unpickler.danger_scan(raw, 0, len(raw), name)


def _find_pickle(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    candidates = _data_pickles(archive)
    if len(candidates) != 1:
        found = "no" if not candidates else "several"
        raise FormatError(f"{name} is a zip file with {found} data.pkl: not a torch checkpoint")
    return candidates[0]


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limit: int) -> bytes:
    _check_member(info, name)
    if info.file_size > limit:
        raise FormatError(
            f"{name}: {printable(info.filename)} is too large ({info.file_size} bytes)"
        )
    try:
        with archive.open(info) as entry:
            raw = entry.read(limit + 1)  # never more, whatever the entry claims: no zip bomb
    except (
        zipfile.BadZipFile,
        zlib.error,
        OSError,
        EOFError,
        ValueError,
        NotImplementedError,
    ) as exc:
        raise FormatError(f"{name}: cannot read {printable(info.filename)} ({exc})") from None
    if len(raw) > limit:
        raise FormatError(f"{name}: {printable(info.filename)} is too large")
    return raw


def _check_member(info: zipfile.ZipInfo, name: str) -> None:
    member = printable(info.filename)
    if info.flag_bits & 0x1:
        raise FormatError(f"{name}: {member} is encrypted")
    if info.compress_type not in _SUPPORTED_COMPRESSION:
        raise FormatError(f"{name}: {member} uses unsupported compression {info.compress_type}")
    compressed = info.compress_type != zipfile.ZIP_STORED
    if compressed and info.file_size > info.compress_size * MAX_COMPRESSION_RATIO + (1 << 16):
        raise FormatError(
            f"{name}: {member} claims to decompress to {info.file_size} bytes from "
            f"{info.compress_size} (more than {MAX_COMPRESSION_RATIO}x: a zip bomb?)"
        )


def _data_offset(data: FileData, info: zipfile.ZipInfo, name: str) -> int:
    """Where a stored entry's bytes start: after its local header, whose extra field may differ
    from the central directory's (torch pads it to align the data)."""
    fields = _LOCAL_HEADER.unpack(data.pread(_LOCAL_HEADER.size, info.header_offset))
    if fields[0] != b"PK\x03\x04":
        raise FormatError(f"{name}: bad local header for {printable(info.filename)}")
    name_length, extra_length = fields[9], fields[10]
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    if start + info.compress_size > data.size:
        raise FormatError(
            f"{name}: {printable(info.filename)} runs past the end of the file (truncated?)"
        )
    return start


def read(path: Path, data: FileData) -> ModelFile:
    name = path.name
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise FormatError(f"{name} is a damaged zip file ({exc})") from None
    with archive:
        candidates = _data_pickles(archive)
        scan_pickle_members(archive, name, skip=candidates[0] if len(candidates) == 1 else None)
        pickle_info = _find_pickle(archive, name)
        prefix = pickle_info.filename[: -len("data.pkl")]
        big_endian = False
        if prefix + "byteorder" in archive.NameToInfo:
            order = _read_member(archive, archive.getinfo(prefix + "byteorder"), name, 16)
            if order not in (b"little", b"big"):
                raise FormatError(f"{name}: unknown byteorder {order[:16]!r}")
            big_endian = order == b"big"
        raw = _read_member(archive, pickle_info, name, MAX_PICKLE_BYTES)
        described: dict[str, unpickler.StorageStub] = {}

        def persistent_load(pid: Any) -> unpickler.StorageStub:
            stub = unpickler.storage_stub(pid, name)
            first = described.setdefault(stub.key, stub)
            if (first.dtype, first.numel) != (stub.dtype, stub.numel):
                # Else the size check below, made once per key, would bound only the first.
                raise FormatError(f"{name}: storage {printable(stub.key)} is described two ways")
            return stub

        root, _ = unpickler.load(raw, 0, len(raw), name, persistent_load)
        storages: dict[str, Storage] = {}

        def storage_for(stub: unpickler.StorageStub, itemsize: int) -> Storage:
            if stub.key in storages:
                return storages[stub.key]
            member = f"{prefix}data/{stub.key}"
            info = archive.NameToInfo.get(member)
            if info is None:
                raise FormatError(f"{name}: storage {printable(member)} is missing")
            _check_member(info, name)
            nbytes = stub.numel * (itemsize if stub.dtype is not None else 1)
            if info.file_size < nbytes:
                raise FormatError(
                    f"{name}: storage {printable(member)} has {info.file_size} bytes, "
                    f"needs {nbytes}"
                )
            if info.compress_type == zipfile.ZIP_STORED:
                if info.compress_size != info.file_size:
                    raise FormatError(f"{name}: storage {printable(member)} has inconsistent sizes")
                storage = FileSpan(data, _data_offset(data, info, name), nbytes)
            else:
                storage = ZipMember(data, member, nbytes)
            storages[stub.key] = storage
            return storage

        def resolve(tensor_name: str, stub: unpickler.TensorStub) -> TensorRef:
            storage = storage_for(stub.storage, stub.dtype.itemsize)
            return TensorRef(
                tensor_name,
                stub.dtype,
                stub.shape,
                storage,
                stub.storage_offset,
                stub.stride,
                big_endian,
            )

        tensors, metadata = split_checkpoint(root, resolve, name)
    return ModelFile(path, "torch-zip", tensors, metadata, data)


def _aligned_info(name: str, position: int, size: int) -> zipfile.ZipInfo:
    """A stored ZipInfo whose local header's extra field pads the data to STORAGE_ALIGNMENT."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # the rule zipfile itself applies on open("w")
    header = _LOCAL_HEADER.size + len(name.encode("utf-8")) + (20 if zip64 else 0)
    padding = -(position + header + 4) % STORAGE_ALIGNMENT
    # Extra field id "FB" with `padding` zero bytes, the way torch's writer pads.
    info.extra = struct.pack("<HH", 0x4246, padding) + b"\0" * padding
    return info


def _take(chunks: Iterator[np.ndarray], nbytes: int) -> Iterator[memoryview]:
    """The next `nbytes` of output from a stream of chunks (chunks never span two entries)."""
    while nbytes > 0:
        chunk = next(chunks)
        nbytes -= chunk.nbytes
        yield memoryview(chunk.view("uint8"))


def write(
    plan: Plan,
    out: BinaryIO,
    progress: Callable[[int], None],
    chunk_bytes: int,
    taps: Sequence[Tap] = (),
) -> None:
    """A torch zip checkpoint: {"state_dict": tensors, **metadata} (or the tensors alone,
    `plan.state_dict_only`), storages 64-byte aligned."""
    names = [entry.name for entry in plan.entries]
    if len(set(names)) != len(names):
        raise FormatError("the plan has duplicate tensor names")
    from ..plan import refuse_quantized

    refuse_quantized(plan, "a torch checkpoint")
    archive_name = "archive"
    data_pkl = pickle_writer.checkpoint(plan)
    fingerprint = hashlib.sha1(data_pkl).hexdigest()
    serialization_id = str(int(fingerprint, 16))[:40].rjust(40, "0")

    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:

        def record(name: str, chunks: Any, size: int, count_progress: bool = False) -> None:
            info = _aligned_info(f"{archive_name}/{name}", out.tell(), size)
            with archive.open(info, "w") as entry:
                if out.tell() % STORAGE_ALIGNMENT:
                    raise AssertionError("storage record is not aligned")
                for chunk in chunks:
                    entry.write(chunk)
                    if count_progress:
                        progress(len(chunk))

        record("data.pkl", [data_pkl], len(data_pkl))
        record(".format_version", [b"1"], 1)
        record(".storage_alignment", [str(STORAGE_ALIGNMENT).encode()], 2)
        record("byteorder", [b"little"], 6)
        output = output_chunks(plan, chunk_bytes, taps=taps)
        for index, entry in enumerate(plan.entries):
            record(f"data/{index}", _take(output, entry.nbytes), entry.nbytes, True)
        # Run the stream to its end: its taps hear the last entry's end only there (a tap
        # that checksums each tensor missed the last one, and autoprune refused the file).
        for _ in output:
            raise AssertionError("the plan wrote more bytes than its entries hold")
        record("version", [b"3\n"], 2)
        record(".data/serialization_id", [serialization_id.encode()], 40)
