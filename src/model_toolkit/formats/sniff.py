"""Which format a file is, told from its first bytes the way the loaders that users run tell it,
and the pickle streams those loaders would run even where we read nothing.

A file that two loaders would read differently is refused: a ZIP local header whose first 8
bytes also read as a safetensors header length is parsed as safetensors by a safetensors-first
sniffer while `torch.load` opens the zip and runs its data.pkl; a legacy torch file whose first
512 bytes also form a (V7, no `ustar` magic) tar header is read by `torch.load` as the oldest
tar format, whose members it unpickles. Before any refusal, every pickle such a loader could
reach is walked with the allow-list, so that a refused file still names the callable it hides.
"""

from __future__ import annotations

import contextlib
import struct
import tarfile
import zipfile
from typing import Any

from ..errors import FormatError
from ..storage import FileData
from . import pickle_scan, safetensors, torch_zip, unpickler
from .torch_common import MAX_PICKLE_BYTES

SAFETENSORS, ZIP, TAR, PICKLE = "safetensors", "zip", "tar", "pickle"
GGUF = "gguf"  # told by its magic alone (formats/gguf.py); listed here for polyglots
_DESCRIPTION = {
    GGUF: "a GGUF file",
    SAFETENSORS: "a safetensors file",
    ZIP: "a zip archive",
    TAR: "a tar archive",
    PICKLE: "a pickle",
}
_TAR_MEMBERS_WITH_PICKLES = ("sys_info", "pickle", "storages", "tensors")


def is_safetensors(prefix: bytes, size: int) -> bool:
    """The reader's own test, and a header length that fits in the file."""
    return safetensors.looks_like(prefix) and 8 + struct.unpack("<Q", prefix[:8])[0] <= size


def is_tar(prefix: bytes) -> bool:
    """A tar header block at 0 with a valid checksum, as tarfile (and so torch) accepts it."""
    if len(prefix) < tarfile.BLOCKSIZE:
        return False
    try:
        tarfile.TarInfo.frombuf(prefix[: tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except (tarfile.HeaderError, ValueError, struct.error):
        return False
    return True


def is_pickle(prefix: bytes) -> bool:
    """Whether torch.load's legacy path would hand the bytes to pickle: any opcode at 0."""
    return bool(prefix) and pickle_scan.is_opcode(prefix[0])


def formats_of(prefix: bytes, size: int) -> list[str]:
    """Every format the first bytes (at least 512 of them, or the whole file) read as."""
    found = [
        kind
        for kind, test in (
            (SAFETENSORS, lambda: is_safetensors(prefix, size)),
            # torch.load's own test (serialization._is_zipfile), as torch_zip's: PK at 0.
            (ZIP, lambda: torch_zip.looks_like(prefix)),
            (TAR, lambda: is_tar(prefix)),
        )
        if test()
    ]
    # A pickle opcode at 0 is also a letter or a brace in other formats; it counts as a second
    # reading only where torch.load would take it so: not for a zip or a safetensors file.
    if (is_pickle(prefix) and not found) or (TAR in found and is_pickle(prefix)):
        found.append(PICKLE)
    return found


def scan_pickles(kind: str, data: FileData, name: str) -> bool:
    """Walk every pickle a loader could run when it reads the file as `kind`; UnsafeFileError
    names the first forbidden callable. Damage is ignored here: the reader reports it.
    Returns whether the file starts with a whole pickle (for PICKLE)."""
    if kind == ZIP:
        _scan_zip(data, name)
    elif kind == TAR:
        _scan_tar(data, name)
    elif kind == PICKLE:
        return _scan_pickle_run(data.mmap, 0, data.size, name)
    return False


def _scan_pickle_run(buffer: Any, start: int, end: int, name: str) -> bool:
    """Pickles one after another (a legacy torch file's first parts), while they parse;
    whether there was at least one."""
    end = min(end, start + MAX_PICKLE_BYTES)
    for count in range(8):
        position = unpickler.danger_scan(buffer, start, end, name)
        if position is None or position >= end:
            return count > 0 or position is not None
        start = position
    return True


def _scan_zip(data: FileData, name: str) -> None:
    try:
        archive = zipfile.ZipFile(data.path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error):
        return
    with archive:
        for info in archive.infolist():
            if not info.filename.endswith(".pkl") or info.file_size > MAX_PICKLE_BYTES:
                continue
            try:
                with archive.open(info) as entry:
                    raw = entry.read(MAX_PICKLE_BYTES + 1)
            except Exception:
                continue
            unpickler.danger_scan(raw, 0, len(raw), name)


def _scan_tar(data: FileData, name: str) -> None:
    """torch's tar format: the members `torch.load` unpickles, in its layout."""
    try:
        archive = tarfile.open(fileobj=open(data.path, "rb"), mode="r:")  # noqa: SIM115
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return
    with archive, contextlib.suppress(tarfile.TarError, OSError, ValueError, EOFError):
        for member in archive.getmembers()[:64]:
            if member.name not in _TAR_MEMBERS_WITH_PICKLES or member.size > MAX_PICKLE_BYTES:
                continue
            handle = archive.extractfile(member)
            if handle is None:
                continue
            raw = handle.read(MAX_PICKLE_BYTES)
            if member.name == "storages":
                _scan_tar_storages(raw, name)
            else:
                unpickler.danger_scan(raw, 0, len(raw), name)


def _scan_tar_storages(raw: bytes, name: str) -> None:
    """`storages`: a count, then per storage a pickle (key, location, storage type) followed
    by an 8-byte element count and the raw elements, then a pickle of the views. Each pickle
    goes through unpickler.load, which walks it (naming any danger) before it unpickles it."""
    try:
        count, position = unpickler.load(raw, 0, len(raw), name)
        if not isinstance(count, int) or isinstance(count, bool):
            return
        for _ in range(min(count, 1 << 16)):
            args, position = unpickler.load(raw, position, len(raw), name)
            storage_type = args[2] if isinstance(args, tuple) and len(args) == 3 else None
            itemsize = getattr(getattr(storage_type, "dtype", None), "itemsize", None)
            if itemsize is None or position + 8 > len(raw):
                return
            (numel,) = struct.unpack("<q", raw[position : position + 8])
            position += 8 + max(numel, 0) * itemsize
    except FormatError:
        return
    unpickler.danger_scan(raw, position, len(raw), name)


def refuse_trailing(buffer: Any, start: int, end: int, name: str) -> None:
    """Bytes after the end of what the format describes: named if they are a pickle that
    calls something forbidden, refused in any case."""
    if pickle_scan.is_opcode(buffer[start]):
        _scan_pickle_run(buffer, start, end, name)
    raise FormatError(f"{name} has {end - start} bytes of trailing data after its last part")


def refuse_polyglot(kinds: list[str], data: FileData, name: str) -> None:
    for kind in kinds:
        scan_pickles(kind, data, name)
    readings = " and ".join(_DESCRIPTION[kind] for kind in kinds)
    raise FormatError(f"{name} reads as both {readings}: refused, loaders disagree on it")
