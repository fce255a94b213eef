"""The hashes model hubs and webuis use, computed in one streamed read of the file.

AutoV1: SHA-256 of the 64 KiB at offset 1 MiB, 8 hex digits (the old webui hash).
AutoV2: the first 10 hex digits of the full SHA-256 (AUTOMATIC1111's short hash).
AutoV3: SHA-256 of a .safetensors file after its header, so metadata edits leave it unchanged
(kohya's `sshs_model_hash`, ModelSpec's `hash_sha256`, the webui's "addnet" hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .formats import safetensors
from .write import write_text_atomically

ALGORITHMS = ("sha256", "autov1", "autov2", "autov3", "blake3", "crc32")
AUTOV1_OFFSET, AUTOV1_SIZE = 0x100000, 0x10000
AUTOV1_MIN_SIZE = 2 << 20  # as model hubs show it: no AutoV1 for smaller files
CHUNK = 8 << 20

Progress = Callable[[int, int], None]


@dataclass
class Hashes:
    path: str
    size: int
    values: dict[str, str | None]  # algorithm -> hex digest; None where it does not apply
    notes: list[str]  # why a value is None


def safetensors_data_offset(path: Path) -> int | None:
    """Where a .safetensors file's tensor data starts, or None for any other file."""
    with open(path, "rb") as handle:
        prefix = handle.read(9)
    if not safetensors.looks_like(prefix):
        return None
    (length,) = struct.unpack("<Q", prefix[:8])
    size = path.stat().st_size
    return 8 + length if 8 + length <= size else None


def _crc32_function() -> Callable[[bytes | memoryview, int], int]:
    """zlib-ng's CRC-32 where it is installed (`pip install zlib-ng`: 20+ GB/s with the CPU's
    carry-less multiply, against 3-4 GB/s for the zlib Python is built with); the same value."""
    try:
        from zlib_ng import zlib_ng
    except ImportError:
        return zlib.crc32
    return zlib_ng.crc32  # type: ignore[no-any-return]


class _Crc32:
    def __init__(self) -> None:
        self.value = 0
        self._crc32 = _crc32_function()

    def update(self, data: bytes | memoryview) -> None:
        self.value = self._crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def _blake3() -> Any:
    try:
        import blake3
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise UsageError("BLAKE3 needs the blake3 package: pip install blake3") from None
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def compute_hashes(
    path: str | os.PathLike[str],
    algorithms: tuple[str, ...] = ALGORITHMS,
    progress: Progress | None = None,
) -> Hashes:
    """Every requested hash of one file from a single sequential read; the hashers run in
    threads over each chunk (hashlib, zlib and blake3 release the GIL), so the read is the
    limit, not the slowest hash."""
    path = Path(path)
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        raise UsageError(f"unknown hash {unknown[0]!r}; use {', '.join(ALGORITHMS)}")
    size = path.stat().st_size
    values: dict[str, str | None] = {}
    notes: list[str] = []
    full: dict[str, Any] = {}
    if {"sha256", "autov2"} & set(algorithms):
        full["sha256"] = hashlib.sha256()
    if "blake3" in algorithms:
        full["blake3"] = _blake3()
    if "crc32" in algorithms:
        full["crc32"] = _Crc32()
    data_offset = None
    if "autov3" in algorithms:
        data_offset = safetensors_data_offset(path)
        if data_offset is None:
            values["autov3"] = None
            notes.append("AutoV3 is defined for .safetensors files only")
    tail = hashlib.sha256() if data_offset is not None else None

    if "autov1" in algorithms:
        if size < AUTOV1_MIN_SIZE:
            values["autov1"] = None
            notes.append("AutoV1 is not defined for files under 2 MiB")
        else:
            with open(path, "rb") as handle:
                handle.seek(AUTOV1_OFFSET)
                values["autov1"] = hashlib.sha256(handle.read(AUTOV1_SIZE)).hexdigest()[:8]

    if full or tail is not None:
        with open(path, "rb", buffering=0) as handle, ThreadPoolExecutor(len(full) + 1) as pool:
            position = 0
            while True:
                chunk = handle.read(CHUNK)
                if not chunk:
                    break
                view = memoryview(chunk)
                jobs = [pool.submit(h.update, view) for h in full.values()]
                if tail is not None and position + len(chunk) > data_offset:  # type: ignore[operator]
                    start = max(0, data_offset - position)  # type: ignore[operator]
                    jobs.append(pool.submit(tail.update, view[start:]))
                for job in jobs:
                    job.result()
                position += len(chunk)
                if progress is not None:
                    progress(position, size)
    if "sha256" in full:
        digest = full["sha256"].hexdigest()
        if "sha256" in algorithms:
            values["sha256"] = digest
        if "autov2" in algorithms:
            values["autov2"] = digest[:10]
    if "blake3" in full:
        values["blake3"] = full["blake3"].hexdigest()
    if "crc32" in full:
        values["crc32"] = full["crc32"].hexdigest()
    if tail is not None:
        values["autov3"] = tail.hexdigest()
    ordered = {a: values.get(a) for a in ALGORITHMS if a in algorithms}
    return Hashes(str(path), size, ordered, notes)


# -- AUTOMATIC1111's cache.json ------------------------------------------------------------
# {"hashes": {TITLE: {"mtime": float, "sha256": hex}}, "hashes-addnet": {TITLE: {...}}}: the
# webui trusts an entry whose mtime is not older than the file's. "hashes-addnet" holds the
# hash of a .safetensors file's data after the header: our AutoV3.


def default_title(path: Path) -> str:
    return f"checkpoint/{path.name}"


def read_webui_cache(cache: Path, path: Path, title: str) -> dict[str, str]:
    """Hashes the webui already knows for `path` and that are still current."""
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {cache}: {exc}") from None
    mtime = path.stat().st_mtime
    found = {}
    for section, algorithm in (("hashes", "sha256"), ("hashes-addnet", "autov3")):
        entry = data.get(section, {}).get(title)
        if isinstance(entry, dict) and entry.get("sha256") and entry.get("mtime", 0) >= mtime:
            found[algorithm] = str(entry["sha256"])
    if "sha256" in found:
        found["autov2"] = found["sha256"][:10]
    return found


def write_webui_cache(cache: Path, path: Path, title: str, values: dict[str, str | None]) -> None:
    """Record the full and data SHA-256 the way the webui does, atomically."""
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {cache}: {exc}") from None
    mtime = path.stat().st_mtime
    for section, algorithm in (("hashes", "sha256"), ("hashes-addnet", "autov3")):
        if values.get(algorithm):
            data.setdefault(section, {})[title] = {"mtime": mtime, "sha256": values[algorithm]}
    write_text_atomically(cache, json.dumps(data, indent=4))
