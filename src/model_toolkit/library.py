"""Scanning a model collection: every file identified header-first, an SQLite index so that a
rescan of an unchanged library is near-instant, and what is duplicated across files.

Files are processed in parallel worker processes (identification is Python and holds the GIL;
fingerprints and hashes read the disk). Each file's record is committed as soon as it is done,
so an interrupted scan resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelToolkitError, UnsafeFileError
from .filenames import walk_model_files
from .isolated import GIB, IsolatedError, WorkerPool

if TYPE_CHECKING:
    from .analysis import Analysis
    from .model import ModelFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hashes INTEGER NOT NULL,  -- 1 when the record has file hashes
    record TEXT NOT NULL      -- JSON: what scan_file returned
)
"""

Progress = Callable[[int, int, str], None]  # (files done, files in all, current file)


def default_db() -> Path:
    """The index in the user's data folder (XDG on Linux, LOCALAPPDATA on Windows)."""
    base = os.environ.get("XDG_DATA_HOME") or os.environ.get("LOCALAPPDATA")
    root = Path(base) if base else Path.home() / ".local" / "share"
    return root / "model-toolkit" / "library.sqlite"


def find_model_files(folders: Iterable[Path]) -> list[Path]:
    """Every model file under the folders (hidden files and folders skipped), each once."""
    found: dict[Path, None] = {}
    for folder in folders:
        if folder.is_file():
            found[folder.resolve()] = None
            continue
        if not folder.is_dir():
            raise ModelToolkitError(f"{folder} is not a folder")
        for path in walk_model_files(folder):
            found[path.resolve()] = None
    return list(found)


def scan_file(path_text: str, with_hashes: bool, header_only: bool = False) -> dict[str, Any]:
    """One file's record: identification, sizes, component fingerprints, optionally hashes.
    With `header_only`, no fingerprints or known components (they read the weights): what the
    header says, and the pickle safety verdict (walked, never run), in kilobytes read.
    Runs in a worker process; never raises for a bad file (the record says what is wrong)."""
    from .analysis import analyze
    from .architectures.registry import load_registry
    from .dtypes import dominant_float
    from .formats import open_model
    from .hashes import compute_hashes

    path = Path(path_text)
    record: dict[str, Any] = {"status": "ok"}
    if header_only:
        record["header_only"] = True
    try:
        with open_model(path) as model:
            analysis = analyze(model)
            record["format"] = model.format
            record["architecture"] = analysis.architecture
            record["components"] = dict(analysis.components)
            dominant = dominant_float(model.tensors.values())
            record["precision"] = dominant.name if dominant else None
            record["total_bytes"] = analysis.sizes.total
            record["prunable_bytes"] = (
                analysis.sizes.total - analysis.sizes.pruned if analysis.architecture else 0
            )
            record["unknown_keys"] = len(analysis.unknown_keys)
            if analysis.architecture is None:
                record["status"] = "unknown"
            elif load_registry().architectures[analysis.architecture].partial:
                record["status"] = "broken"
            if not header_only:
                record.update(_weight_facts(model, analysis, path.name))
    except UnsafeFileError as exc:
        record.update(status="unsafe", error=str(exc))
    except ModelToolkitError as exc:
        record.update(status="unreadable", error=str(exc))
    except OSError as exc:
        record.update(status="unreadable", error=exc.strerror or str(exc))
    except Exception as exc:  # a bug on one odd file must not end the scan
        record.update(status="error", error=f"internal error ({exc.__class__.__name__}: {exc})")
    if with_hashes and record["status"] not in ("unreadable", "error"):
        try:
            record["hashes"] = compute_hashes(path, ("sha256", "autov2", "autov3")).values
        except (ModelToolkitError, OSError) as exc:
            record.update(status="unreadable", error=str(exc))
    return record


def _weight_facts(model: ModelFile, analysis: Analysis, name: str) -> dict[str, Any]:
    """What a record says from the weights: each component's content fingerprint, and the
    known VAEs and CLIPs by the original toolkit's metric (the UNET part is skipped, as no
    UNET is known by name)."""
    from .architectures.locate import find_component
    from .fingerprints import content_fingerprint
    from .metric import compute_metric, known_components
    from .operations.common import component_entries, entries_of

    entries = entries_of(model)
    fingerprints = {}
    for cls in analysis.components:
        found = find_component(analysis.detection, cls, None, name)
        pairs = [
            (key, analysis.valued(e)) for key, e in component_entries(found, analysis, entries)
        ]
        fingerprints[cls] = [found.component.name, content_fingerprint(pairs)]
    metric = compute_metric(analysis, frozenset({"vae", "clip"}))
    return {"fingerprints": fingerprints, "known": known_components(metric)}


def file_timeout(size: int) -> float:
    """How long one file may take in a worker: a minute, plus reading it at 20 MB/s."""
    return 60.0 + size / 20e6


def file_memory(size: int) -> int:
    """The address space one file's worker may use: the file (the metric maps it) + 4 GiB."""
    return size + 4 * GIB


def scan_isolated(
    pool: WorkerPool,
    path: Path,
    size: int,
    with_hashes: bool,
    timeout: Callable[[int], float],
    header_only: bool = False,
) -> dict[str, Any]:
    """scan_file in a worker of `pool`: a crash or time-out is the file's record, not ours."""
    try:
        return pool.call(
            scan_file,
            str(path),
            with_hashes,
            header_only,
            timeout=timeout(size),
            memory=file_memory(size),
        )
    except IsolatedError as exc:
        return {"status": "error", "error": str(exc)}


@dataclass
class ScanResult:
    files: dict[str, dict[str, Any]]  # path -> record (with "size")
    from_index: int  # records reused unchanged
    scanned: int
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    shared_components: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reclaimable_bytes(self) -> int:
        """Extra copies of identical files, plus what pruning every file would save."""
        copies = sum(d["size"] * (len(d["files"]) - 1) for d in self.duplicates)
        return copies + sum(r.get("prunable_bytes", 0) for r in self.files.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "from_index": self.from_index,
            "scanned": self.scanned,
            "duplicates": self.duplicates,
            "shared_components": self.shared_components,
            "reclaimable_bytes": self.reclaimable_bytes,
        }


class Library:
    """The SQLite index of scanned files."""

    def __init__(self, db: Path) -> None:
        db.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(db)
        self.connection.execute(SCHEMA)
        self.file_timeout: Callable[[int], float] = file_timeout
        self.pool_context: Any = None  # a multiprocessing context; None: WorkerPool's default

    def close(self) -> None:
        self.connection.close()

    def cached(
        self, path: Path, size: int, mtime_ns: int, hashes: bool, header_only: bool = False
    ) -> dict[str, Any] | None:
        """The stored record of an unchanged file, if it has what is asked for (hashes;
        fingerprints, unless a header-only scan is asked for)."""
        row = self.connection.execute(
            "SELECT size, mtime_ns, hashes, record FROM files WHERE path = ?", (str(path),)
        ).fetchone()
        if row is None or (row[0], row[1]) != (size, mtime_ns) or (hashes and not row[2]):
            return None
        record: dict[str, Any] = json.loads(row[3])
        if record.get("header_only") and not header_only:
            return None
        return record

    def store(self, path: Path, size: int, mtime_ns: int, record: dict[str, Any]) -> None:
        self.connection.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
            (str(path), size, mtime_ns, int("hashes" in record), json.dumps(record)),
        )
        self.connection.commit()

    def scan(
        self,
        folders: Iterable[Path],
        with_hashes: bool = False,
        workers: int | None = None,
        progress: Progress | None = None,
        header_only: bool = False,
    ) -> ScanResult:
        paths = find_model_files(folders)
        files: dict[str, dict[str, Any]] = {}
        todo = []
        for path in list(paths):
            try:
                stat = path.stat()
            except OSError:  # gone (or a dangling link) since it was listed
                paths.remove(path)
                continue
            record = self.cached(path, stat.st_size, stat.st_mtime_ns, with_hashes, header_only)
            if record is None:
                todo.append((path, stat))
            else:
                files[str(path)] = {**record, "size": stat.st_size}
        from_index = len(files)
        done = from_index
        workers = workers if workers is not None else (os.cpu_count() or 1)

        def finish(path: Path, stat: os.stat_result, record: dict[str, Any]) -> None:
            nonlocal done
            if record["status"] != "error":  # a crash or a time-out is tried again next scan
                self.store(path, stat.st_size, stat.st_mtime_ns, record)
            files[str(path)] = {**record, "size": stat.st_size}
            done += 1
            if progress is not None:
                progress(done, len(paths), path.name)

        if todo:
            # Threads only wait: each hands its file to a worker process of the pool.
            with (
                WorkerPool(self.pool_context) as pool,
                ThreadPoolExecutor(max(1, min(workers, len(todo)))) as threads,
            ):
                futures = {
                    threads.submit(
                        scan_isolated,
                        pool,
                        path,
                        stat.st_size,
                        with_hashes,
                        self.file_timeout,
                        header_only,
                    ): (path, stat)
                    for path, stat in todo
                }
                for future in as_completed(futures):
                    finish(*futures[future], future.result())
        ordered = {str(p): files[str(p)] for p in paths}
        result = ScanResult(ordered, from_index, len(todo))
        result.duplicates = identical_files(ordered)
        result.shared_components = shared_components(ordered)
        return result


def identical_files(files: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Files with the same bytes (same SHA-256 when hashed), else the same size and the same
    weights in every component and nothing else (same fingerprints, same format)."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for path, record in files.items():
        if record.get("hashes"):
            key: tuple[Any, ...] = ("sha256", record["hashes"]["sha256"])
        elif record.get("fingerprints") and record.get("unknown_keys") == 0:
            prints = sorted((c, f[1]) for c, f in record["fingerprints"].items())
            key = ("weights", record["size"], record.get("format"), tuple(prints))
        else:
            continue
        groups.setdefault(key, []).append(path)
    return [
        {"files": paths, "size": files[paths[0]]["size"], "by": key[0]}
        for key, paths in groups.items()
        if len(paths) > 1
    ]


def shared_components(files: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Components with the same weights in more than one file, whatever format or width."""
    groups: dict[tuple[str, str], list[str]] = {}
    names: dict[tuple[str, str], str] = {}
    known: dict[tuple[str, str], str | None] = {}
    for path, record in files.items():
        for cls, (component, fingerprint) in (record.get("fingerprints") or {}).items():
            groups.setdefault((cls, fingerprint), []).append(path)
            names[(cls, fingerprint)] = component
            part = cls.split("-")[0]  # "VAE", "CLIP": known names end with the part
            named = [k for k in record.get("known", []) if k.endswith(" " + part)]
            known[(cls, fingerprint)] = named[0] if named else None
    return [
        {
            "class": cls,
            "component": names[(cls, fp)],
            "known": known[(cls, fp)],
            "fingerprint": fp[:16],
            "files": paths,
        }
        for (cls, fp), paths in sorted(groups.items(), key=lambda item: -len(item[1]))
        if len(paths) > 1
    ]


def summary_counts(result: ScanResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in result.files.values():
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return counts
