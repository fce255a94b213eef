"""Every file the web UI reads is first read in a worker process, with a time and a memory
limit, before the server process touches it.

The Advanced tab reads the header of every file in the model folders, and Load reads the one
chosen; the server is shared by every visitor. The readers have budgets of their own, but a
file that beats them (or a reader bug) must cost one worker, not the server: a crash, a hang
or a memory blow-up becomes that file's error, shown to whoever chose it, and is remembered
per file (size, time, inode), so no visitor pays for it twice.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..errors import ModelToolkitError
from ..isolated import GIB, WorkerPool

VET_TIMEOUT = 30.0  # a header takes milliseconds; 30 s is far beyond any real file
_pool: WorkerPool | None = None
_pool_lock = threading.Lock()
_verdicts: dict[tuple[str, int, int, int], dict[str, dict[str, list[str]]] | ModelToolkitError] = {}


def header_classes(path_text: str) -> dict[str, dict[str, list[str]]]:
    """What a file holds, by header: architecture -> class -> components (runs in a worker)."""
    from ..analysis import analyze
    from ..formats import open_model

    with open_model(path_text) as model:
        return {arch: dict(by_class) for arch, by_class in analyze(model).detection.found.items()}


def _shared_pool() -> WorkerPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = WorkerPool()
        return _pool


def vet(path: Path) -> dict[str, dict[str, list[str]]]:
    """The file's classes, read in a worker; raises the file's ModelToolkitError (including
    IsolatedError for a crash, hang or blow-up). Cached while the file is unchanged."""
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    verdict = _verdicts.get(key)
    if verdict is None:
        try:
            verdict = _shared_pool().call(
                header_classes,
                str(path),
                timeout=VET_TIMEOUT,
                memory=stat.st_size + 2 * GIB,  # legacy files are read through a mapping
                what=f"reading {path.name}",
            )
        except ModelToolkitError as exc:
            verdict = exc
        _verdicts[key] = verdict
    if isinstance(verdict, ModelToolkitError):
        raise verdict
    return verdict
