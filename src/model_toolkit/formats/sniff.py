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
from typing import Any

from ..errors import FormatError
from ..storage import FileData
from . import safetensors

# The pickle, zip and tar modules are imported where a file is one: telling a safetensors
# file from them must not cost their import (issue #22: identifying starts in milliseconds).

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


TAR_BLOCK = 512
# Every pickle opcode (pickletools.opcodes; a test keeps the two the same).
PICKLE_OPCODES = frozenset(
    b"().012BCFGIJKLMNPQRSTUVX]abcdeghijlopqrstu}\x80\x81\x82\x83\x84\x85\x86\x87\x88"
    b"\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96\x97\x98"
)


def is_tar(prefix: bytes) -> bool:
    """A tar header block at 0 with a valid checksum, as tarfile (and so torch) accepts it."""
    if len(prefix) < TAR_BLOCK or not _may_be_tar(prefix[:TAR_BLOCK]):
        return False
    import tarfile

    try:
        tarfile.TarInfo.frombuf(prefix[:TAR_BLOCK], "utf-8", "surrogateescape")
    except (tarfile.HeaderError, ValueError, struct.error):
        return False
    return True


def _may_be_tar(block: bytes) -> bool:
    """False where tarfile would refuse the block for its checksum (nearly every file that is
    not a tar), without importing tarfile: the octal checksum at 148 must be the sum of the
    block's bytes, the checksum field counted as spaces (unsigned, or signed as old tars)."""
    field = block[148:156]
    if field[:1] in (b"\x80", b"\xff"):
        return True  # base-256: tarfile decides
    digits = field.split(b"\0", 1)[0].strip()
    try:
        stored = int(digits or b"0", 8)
    except ValueError:
        return False
    body = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(body)
    signed = unsigned - 256 * sum(1 for byte in body if byte > 127)
    return stored in (unsigned, signed)


def is_pickle(prefix: bytes) -> bool:
    """Whether torch.load's legacy path would hand the bytes to pickle: any opcode at 0."""
    return bool(prefix) and prefix[0] in PICKLE_OPCODES


def formats_of(prefix: bytes, size: int) -> list[str]:
    """Every format the first bytes (at least 512 of them, or the whole file) read as."""
    found = [
        kind
        for kind, test in (
            (SAFETENSORS, lambda: is_safetensors(prefix, size)),
            # torch.load's own test (serialization._is_zipfile): PK at 0.
            (ZIP, lambda: prefix.startswith(ZIP_MAGIC)),
            (TAR, lambda: is_tar(prefix)),
        )
        if test()
    ]
    # A pickle opcode at 0 is also a letter or a brace in other formats; it counts as a second
    # reading only where torch.load would take it so: not for a zip or a safetensors file.
    if (is_pickle(prefix) and not found) or (TAR in found and is_pickle(prefix)):
        found.append(PICKLE)
    return found


ZIP_MAGIC = b"PK\x03\x04"


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
    from . import unpickler
    from .torch_common import MAX_PICKLE_BYTES

    end = min(end, start + MAX_PICKLE_BYTES)
    for count in range(8):
        position = unpickler.danger_scan(buffer, start, end, name)
        if position is None or position >= end:
            return count > 0 or position is not None
        start = position
    return True


def _scan_zip(data: FileData, name: str) -> None:
    import zipfile

    from . import unpickler
    from .torch_common import MAX_PICKLE_BYTES

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
    import tarfile

    from . import unpickler
    from .torch_common import MAX_PICKLE_BYTES

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
    from . import unpickler

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
    if buffer[start] in PICKLE_OPCODES:
        _scan_pickle_run(buffer, start, end, name)
    raise FormatError(f"{name} has {end - start} bytes of trailing data after its last part")


def refuse_polyglot(kinds: list[str], data: FileData, name: str) -> None:
    for kind in kinds:
        scan_pickles(kind, data, name)
    readings = " and ".join(_DESCRIPTION[kind] for kind in kinds)
    raise FormatError(f"{name} reads as both {readings}: refused, loaders disagree on it")
