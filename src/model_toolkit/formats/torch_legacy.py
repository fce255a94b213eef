"""Legacy torch files (`torch.save` before 1.6, or `_use_new_zipfile_serialization=False`).

Layout: four pickles in a row (magic number, protocol version, system info, the object with
storages as persistent ids), a fifth pickle listing the storage keys, then for each key in that
order an 8-byte element count and the raw bytes. Only the pickles and the 8-byte counts are read.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..model import ModelFile, TensorRef
from ..storage import FileData, FileSpan, Storage
from . import sniff, unpickler
from .torch_common import MAX_PICKLE_BYTES, split_checkpoint

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_MAGIC_BYTES = MAGIC_NUMBER.to_bytes(10, "little")


def looks_like(prefix: bytes) -> bool:
    return prefix[:1] == b"\x80" and _MAGIC_BYTES in prefix[:24]


def read(path: Path, data: FileData) -> ModelFile:
    name = path.name
    buffer = data.mmap
    limit = min(data.size, MAX_PICKLE_BYTES)

    def load(start: int, persistent_load: Any = None) -> tuple[Any, int]:
        return unpickler.load(buffer, start, limit, name, persistent_load)

    magic, position = load(0)
    if magic != MAGIC_NUMBER:
        raise FormatError(f"{name}: not a torch file (bad magic number)")
    protocol, position = load(position)
    if protocol != PROTOCOL_VERSION:
        raise FormatError(f"{name}: unsupported legacy torch protocol")
    sys_info, position = load(position)
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True) is not False

    stubs: dict[str, unpickler.StorageStub] = {}

    def persistent_load(pid: Any) -> unpickler.StorageStub:
        stub = unpickler.storage_stub(pid, name)
        if stub.dtype is None:
            raise FormatError(f"{name}: untyped storage in a legacy file")
        known = stubs.setdefault(stub.key, stub)
        if known.dtype != stub.dtype or known.numel != stub.numel:
            raise FormatError(f"{name}: storage {stub.key} is described two ways")
        return stub

    root, position = load(position, persistent_load)
    keys, position = load(position)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise FormatError(f"{name}: bad storage key list")

    storages: dict[str, Storage] = {}
    count_format = "<q" if little else ">q"
    for key in keys:
        stub = stubs.get(key)
        if stub is None or stub.dtype is None:
            raise FormatError(f"{name}: storage {key} is listed but never used")
        (numel,) = struct.unpack(count_format, data.pread(8, position))
        if numel != stub.numel:
            raise FormatError(f"{name}: storage {key} has {numel} elements, expected {stub.numel}")
        nbytes = numel * stub.dtype.itemsize
        if position + 8 + nbytes > data.size:
            raise FormatError(f"{name} is truncated (storage {key} runs past the end)")
        storages[key] = FileSpan(data, position + 8, nbytes)
        position += 8 + nbytes
    if position != data.size:
        # torch never reads past the last storage, but another tool might: say what is there.
        sniff.refuse_trailing(buffer, position, data.size, name)

    def resolve(tensor_name: str, stub: unpickler.TensorStub) -> TensorRef:
        storage = storages.get(stub.storage.key)
        if storage is None:
            raise FormatError(f"{name}: storage {stub.storage.key} has no data")
        offset = stub.storage_offset
        if stub.storage.view is not None:
            # A tensor on a view of a bigger storage: elements are counted from the view's start.
            _, view_offset, view_size = stub.storage.view
            if view_offset + view_size > stub.storage.numel:
                raise FormatError(f"{name}: storage view runs past its storage")
            offset += view_offset
        return TensorRef(
            tensor_name, stub.dtype, stub.shape, storage, offset, stub.stride, not little
        )

    tensors, metadata = split_checkpoint(root, resolve, name)
    return ModelFile(path, "torch-legacy", tensors, metadata, data)
