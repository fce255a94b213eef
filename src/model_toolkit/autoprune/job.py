"""The autoprune job: file every model in the inbox into its folder, and never lose one.

The original toolkit deleted each input before saving its output, so a crash lost the model.
Here an input is removed only after its output is written, fsynced, reopened and checked
against the checksums taken while writing. A small marker file in the inbox, written before
the output gets its final name, lets the next run finish or undo whatever a crash interrupted:
killed at any moment, the inbox still holds the input or the model folder holds the verified
output (never neither, never a partial file under a final name).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..analysis import analyze
from ..architectures.registry import load_registry
from ..dtypes import DTYPES, DType
from ..errors import ModelToolkitError, UsageError
from ..formats import open_model
from ..names import free_name, is_model_name, stem_of
from ..operations import convert, prune
from ..plan import Plan
from ..report import Findings, advanced_report
from ..verify import ChecksummedPlan, TensorRecord, verify_output
from ..write import commit, sync_folder, write_temp, write_text_atomically
from .layouts import Layout

TEMP_SUFFIX = ".mtk-autoprune"  # our temporary files; others' (`mtk prune` running) are left be
MARKER_SUFFIX = ".mtk-autoprune.json"
LOCK_NAME = ".mtk-autoprune.lock"
UNCHANGED_VALUES = {"lora", "embedding"}  # converted to .safetensors with their values kept

Progress = Callable[[str, int, int], None]  # (file name, bytes written, total bytes)


@dataclass
class Options:
    precision: DType | None = DTYPES["F16"]
    keep_ema: bool = False
    fix_clip: bool = False
    dry_run: bool = False
    settle_seconds: float = 2.0  # a file modified more recently may still be downloading


@dataclass
class Outcome:
    """What happened to one inbox file."""

    file: str
    status: str  # filed, failed, waiting (still growing), error (left in the inbox), recovered
    kind: str | None = None
    architecture: str | None = None
    destination: str | None = None
    input_bytes: int = 0
    output_bytes: int | None = None
    reason: str | None = None

    @property
    def saved_bytes(self) -> int:
        return self.input_bytes - self.output_bytes if self.output_bytes is not None else 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "saved_bytes": self.saved_bytes}


class Rejected(ModelToolkitError):
    """The file itself is the problem: it goes to Failed/ with the reason beside it."""

    def __init__(self, reason: str, details: str = "") -> None:
        super().__init__(reason)
        self.details = details


def inbox_files(inbox: Path) -> list[Path]:
    """The model files waiting in the inbox, by name (hidden files are ours or a download's)."""
    if not inbox.is_dir():
        return []
    return sorted(path for path in inbox.iterdir() if is_model_name(path.name) and path.is_file())


@contextmanager
def inbox_lock(inbox: Path) -> Iterator[None]:
    """One autoprune per inbox at a time (the webui at start-up and a terminal, say)."""
    inbox.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; running two at once is on the user
        yield
        return
    with open(inbox / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(f"another autoprune is already working on {inbox}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Autopruner:
    """Processes an inbox into a layout's folders; one instance per run or per watch."""

    def __init__(self, layout: Layout, options: Options, progress: Progress | None = None):
        self.layout = layout
        self.options = options
        self.progress = progress

    # -- the whole inbox ------------------------------------------------------------------

    def run_once(self, stop: threading.Event | None = None) -> list[Outcome]:
        """Recover from an interrupted run, then handle every settled file in the inbox."""
        if self.options.dry_run:
            return [self.process(path) for path in inbox_files(self.layout.inbox)]
        with inbox_lock(self.layout.inbox):
            outcomes = self.recover()
            for path in inbox_files(self.layout.inbox):
                if stop is not None and stop.is_set():
                    break
                outcomes.append(self.process(path))
        return outcomes

    def recover(self) -> list[Outcome]:
        """Remove our temporary files, and finish or undo each move a crash interrupted."""
        outcomes = []
        for folder in {self.layout.inbox, self.layout.failed, *self.layout.folders.values()}:
            if folder.is_dir():
                for path in folder.iterdir():
                    if path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX):
                        path.unlink(missing_ok=True)
        for marker in sorted(self.layout.inbox.glob(f".*{MARKER_SUFFIX}")):
            outcome = self._finish_interrupted(marker)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    # -- one file -------------------------------------------------------------------------

    def process(self, path: Path) -> Outcome:
        """Identify, plan, write, verify and file one inbox file (or fail it, with a reason)."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return Outcome(path.name, "error", reason="it disappeared")
        outcome = Outcome(path.name, "waiting", input_bytes=stat.st_size)
        if time.time() - stat.st_mtime < self.options.settle_seconds:
            outcome.reason = "still being written"
            return outcome
        try:
            with open_model(path) as model:
                plan, outcome.kind, outcome.architecture = self.plan_for(model, path.name)
                folder = self.layout.folder_for(outcome.kind)
                stem = stem_of(path.name)
                if self.options.dry_run:
                    outcome.status = "filed"
                    outcome.destination = str(free_name(folder, stem, ".safetensors"))
                    outcome.output_bytes = estimated_size(plan)
                    return outcome
                folder.mkdir(parents=True, exist_ok=True)
                return self._file(path, stat, plan, folder, stem, outcome)
        except Rejected as exc:
            return self._fail(path, outcome, str(exc), exc.details)
        except ModelToolkitError as exc:
            if outcome.kind is None:  # the file could not be read or planned: its own fault
                return self._fail(path, outcome, str(exc))
            outcome.status, outcome.reason = "error", str(exc)  # writing failed: input kept
            return outcome
        except OSError as exc:
            outcome.status, outcome.reason = "error", f"{exc.strerror or exc}"
            return outcome

    def plan_for(self, model: Any, name: str) -> tuple[Plan, str, str]:
        """What the file becomes: (plan, kind, architecture); Rejected when it cannot be filed."""
        analysis = analyze(model, self.options.precision, self.options.keep_ema)
        arch = analysis.architecture
        if arch is None:
            raise Rejected(
                "model type could not be identified", advanced_report(analysis, Findings())
            )
        kind = load_registry().architectures[arch].kind
        if kind is None:
            classes = ", ".join(analysis.components)
            details = advanced_report(analysis, Findings())
            raise Rejected(f"partial model ({arch}): it has only {classes}", details)
        if kind in UNCHANGED_VALUES:
            return convert(model, None), kind, arch
        options = self.options
        return prune(model, options.precision, options.keep_ema, options.fix_clip), kind, arch

    def _file(
        self,
        path: Path,
        stat: os.stat_result,
        plan: Plan,
        folder: Path,
        stem: str,
        outcome: Outcome,
    ) -> Outcome:
        target = free_name(folder, stem, ".safetensors")
        checked = ChecksummedPlan(plan)

        def report(done: int, total: int) -> None:
            if self.progress is not None:
                self.progress(path.name, done, total)

        temp = write_temp(checked, target, progress=report, suffix=TEMP_SUFFIX)
        marker = self._marker_path(path)
        try:
            verify_output(temp, checked.records, plan.metadata)
            # From here a crash leaves the marker; the next run's recover() reads it.
            while True:
                self._write_marker(marker, path, stat, target, checked, plan)
                try:
                    commit(temp, target)
                    break
                except ModelToolkitError:
                    if not target.exists():
                        raise
                    target = free_name(folder, stem, ".safetensors")  # appeared meanwhile
        finally:
            temp.unlink(missing_ok=True)
        path.unlink()
        sync_folder(path.parent)
        marker.unlink(missing_ok=True)
        outcome.status = "filed"
        outcome.destination = str(target)
        outcome.output_bytes = target.stat().st_size
        return outcome

    def _fail(self, path: Path, outcome: Outcome, reason: str, details: str = "") -> Outcome:
        """Move a file that cannot be filed to Failed/, with `NAME.txt` saying why."""
        outcome.status, outcome.reason = "failed", reason
        if self.options.dry_run:
            outcome.destination = str(self.layout.failed / path.name)
            return outcome
        failed = self.layout.failed
        failed.mkdir(parents=True, exist_ok=True)
        stem = stem_of(path.name)
        suffix = path.name[len(stem) :]
        target = free_name(failed, stem, suffix)
        text = f"{path.name}: {reason}\n" + (f"\n{details}" if details else "")
        write_text_atomically(target.with_name(target.name + ".txt"), text, TEMP_SUFFIX)
        try:
            commit(path, target)
        except ModelToolkitError as exc:
            outcome.status, outcome.reason = "error", f"{reason}; could not move it: {exc}"
            return outcome
        sync_folder(path.parent)
        outcome.destination = str(target)
        return outcome

    # -- the marker: what to do if a crash interrupts the move ----------------------------

    def _marker_path(self, path: Path) -> Path:
        return path.parent / f".{path.name}{MARKER_SUFFIX}"

    def _write_marker(
        self,
        marker: Path,
        path: Path,
        stat: os.stat_result,
        target: Path,
        checked: ChecksummedPlan,
        plan: Plan,
    ) -> None:
        record = {
            "input": path.name,
            "input_size": stat.st_size,
            "input_mtime_ns": stat.st_mtime_ns,
            "output": str(target),
            "metadata": plan.metadata,
            "tensors": {name: rec.as_list() for name, rec in checked.records.items()},
        }
        write_text_atomically(marker, json.dumps(record, default=str), TEMP_SUFFIX)

    def _finish_interrupted(self, marker: Path) -> Outcome | None:
        """A marker means a crash came between naming the output and removing the input."""
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
            source = marker.parent / record["input"]
            output = Path(record["output"])
            records = {n: TensorRecord.from_list(r) for n, r in record["tensors"].items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            marker.unlink(missing_ok=True)  # unreadable: the input, if any, is simply redone
            return None
        try:
            stat = source.stat()
        except FileNotFoundError:
            marker.unlink(missing_ok=True)  # the move had completed
            return None
        same_input = (stat.st_size, stat.st_mtime_ns) == (
            record["input_size"],
            record["input_mtime_ns"],
        )
        if same_input and output.is_file():
            try:
                verify_output(output, records, record["metadata"])
            except ModelToolkitError:
                pass  # not our output (the name was taken meanwhile): the input is redone
            else:
                source.unlink()
                sync_folder(source.parent)
                marker.unlink(missing_ok=True)
                return Outcome(
                    source.name,
                    "recovered",
                    destination=str(output),
                    input_bytes=stat.st_size,
                    output_bytes=output.stat().st_size,
                    reason="finished a move that an earlier run was interrupted in",
                )
        marker.unlink(missing_ok=True)
        return None


def estimated_size(plan: Plan) -> int:
    from ..formats.safetensors import header_bytes

    return len(header_bytes(plan)) + plan.nbytes
