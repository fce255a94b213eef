"""The autoprune job: file every model in the inbox into its folder, and never lose one.

The original toolkit deleted each input before saving its output, so a crash lost the model.
Here an input is removed only after its output is written, fsynced, reopened and checked
against the checksums taken while writing. A small marker file in the inbox, written before
the output gets its final name, lets the next run finish or undo whatever a crash interrupted:
killed at any moment, the inbox still holds the input or the model folder holds the verified
output (never neither, never a partial file under a final name).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..analysis import analyze
from ..architectures.registry import load_registry
from ..dtypes import AUTO, DType
from ..errors import ModelToolkitError, UsageError
from ..filenames import free_name, is_model_name, is_prunable_name, stem_of
from ..formats import open_model
from ..operations import convert, prune
from ..plan import Plan
from ..report import Findings, advanced_report
from ..verify import TensorChecksums, TensorRecord, verify_output
from ..write import commit, sync_folder, write_temp, write_text_atomically
from .layouts import Layout

TEMP_SUFFIX = ".mtk-autoprune"  # our temporary files; others' (`mtk prune` running) are left be
MARKER_SUFFIX = ".mtk-autoprune.json"
LOCK_NAME = ".mtk-autoprune.lock"
# converted with their values kept (a preview decoder is a few MB: nothing worth narrowing)
UNCHANGED_VALUES = {"lora", "embedding", "vae_approx"}

Progress = Callable[[str, int, int], None]  # (file name, bytes written, total bytes)


@dataclass
class Options:
    precision: DType | None = AUTO  # a bf16 Flux stays bf16; fp32 becomes the model's 16-bit
    keep_ema: bool = False
    fix_clip: bool = False
    dry_run: bool = False
    settle_seconds: float = 2.0  # a file modified more recently may still be downloading


@dataclass
class Outcome:
    """What happened to one inbox file."""

    file: str
    status: str  # filed, failed, waiting (still growing), error (left in the inbox),
    # recovered (an interrupted move finished), ignored (a marker we did not write)
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
    return sorted(
        path for path in inbox.iterdir() if is_prunable_name(path.name) and path.is_file()
    )


@contextmanager
def inbox_lock(inbox: Path) -> Iterator[None]:
    """One autoprune per inbox at a time (the webui at start-up and a terminal, say)."""
    inbox.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; running two at once is on the user
        yield
        return
    # O_NOFOLLOW: a lock planted as a symbolic link must not make us create its target.
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(inbox / LOCK_NAME, flags, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot use the lock {inbox / LOCK_NAME}: {exc.strerror}") from None
    if not stat_module.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"the lock {inbox / LOCK_NAME} is not a regular file")
    with os.fdopen(fd, "a") as handle:
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
                # What was read, by identity: a file renamed over this name meanwhile is
                # another file, and must not be the one removed after filing this one.
                stat = os.fstat(model._data.fd) if model._data is not None else stat
                plan, outcome.kind, outcome.architecture = self.plan_for(model, path.name)
                folder = self.layout.folder_for(outcome.kind)
                stem = stem_of(path.name)
                if self.options.dry_run:
                    outcome.status = "filed"
                    suffix = self.layout.suffix_for(outcome.kind)
                    outcome.destination = str(free_name(folder, stem, suffix))
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
        options = self.options
        if kind in UNCHANGED_VALUES:
            plan = convert(model, None)
        else:
            plan = prune(model, options.precision, options.keep_ema, options.fix_clip)
        # A torch file for its host (the webui's preview decoders) is the state dict alone.
        plan.state_dict_only = self.layout.suffix_for(kind) != ".safetensors"
        return plan, kind, arch

    def _file(
        self,
        path: Path,
        stat: os.stat_result,
        plan: Plan,
        folder: Path,
        stem: str,
        outcome: Outcome,
    ) -> Outcome:
        suffix = self.layout.suffix_for(outcome.kind or "")
        target = free_name(folder, stem, suffix)
        checked = TensorChecksums()

        def report(done: int, total: int) -> None:
            if self.progress is not None:
                self.progress(path.name, done, total)

        temp = write_temp(plan, target, progress=report, suffix=TEMP_SUFFIX, taps=[checked])
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
                    target = free_name(folder, stem, suffix)  # appeared meanwhile
        finally:
            temp.unlink(missing_ok=True)
        if same_file(path, file_identity(stat)):
            path.unlink()
            sync_folder(path.parent)
        else:
            outcome.reason = "the inbox file was replaced meanwhile; the new one is kept"
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
        checked: TensorChecksums,
        plan: Plan,
    ) -> None:
        record = {
            "input": path.name,
            "input_identity": file_identity(stat),
            "output": str(target),
            "metadata": plan.metadata,
            "tensors": {name: rec.as_list() for name, rec in checked.records.items()},
        }
        body = json.dumps(record, default=str)
        signed = {"record": body, "mac": marker_mac(body)}
        write_text_atomically(marker, json.dumps(signed), TEMP_SUFFIX)

    def _finish_interrupted(self, marker: Path) -> Outcome | None:
        """A marker means a crash came between naming the output and removing the input.

        It is acted on only if we wrote it (its MAC) and it describes a move we would make:
        the input is the file the marker is named after, in the inbox; the output is another
        file, in one of the layout's folders. Anything else is left alone and reported: a
        planted marker must not make us delete a file we never read."""
        try:
            record = read_marker(marker)
        except _ForeignMarker as exc:
            return Outcome(marker.name, "ignored", reason=f"{exc}; left alone")
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            marker.unlink(missing_ok=True)  # unreadable: the input, if any, is simply redone
            return None
        source = marker.parent / record["input"]
        output = Path(record["output"])
        problem = self._implausible(marker, record["input"], output)
        if problem:
            return Outcome(marker.name, "ignored", reason=f"{problem}; left alone")
        records = {n: TensorRecord.from_list(r) for n, r in record["tensors"].items()}
        if not os.path.lexists(source):
            marker.unlink(missing_ok=True)  # the move had completed
            return None
        same_input = same_file(source, record["input_identity"])
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
                    input_bytes=record["input_identity"][2],
                    output_bytes=output.stat().st_size,
                    reason="finished a move that an earlier run was interrupted in",
                )
        marker.unlink(missing_ok=True)
        return None

    def _implausible(self, marker: Path, name: str, output: Path) -> str | None:
        """Why a marker does not describe a move of ours, or None."""
        if marker.name != f".{name}{MARKER_SUFFIX}" or Path(name).name != name:
            return "its input is not the file it is named after"
        if not is_model_name(name):
            return "its input is not a model file"
        folders = {folder.resolve() for folder in self.layout.folders.values()}
        if output.parent.resolve() not in folders or not is_model_name(output.name):
            return "its output is not in a model folder"
        if output.resolve() == (marker.parent / name).resolve():
            return "its output is its input"
        return None


class _ForeignMarker(ModelToolkitError):
    """A marker file that autoprune did not write (no MAC, or a wrong one)."""


MAX_MARKER_BYTES = 64 * 1024 * 1024  # a marker holds one CRC per tensor: ~1 MB for 10k


def read_marker(marker: Path) -> dict[str, Any]:
    """The record a marker holds, read without following a link, checked against its MAC."""
    fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            raise _ForeignMarker("the marker is not a regular file")
        signed = json.loads(handle.read(MAX_MARKER_BYTES + 1).decode("utf-8"))
    if not isinstance(signed, dict) or not isinstance(signed.get("record"), str):
        raise _ForeignMarker("the marker was not written by autoprune")
    body = signed["record"]
    if not hmac.compare_digest(str(signed.get("mac", "")), marker_mac(body)):
        raise _ForeignMarker("the marker was not written by autoprune (its MAC differs)")
    record = json.loads(body)
    if not isinstance(record, dict):
        raise _ForeignMarker("the marker was not written by autoprune")
    return record


def marker_key_path() -> Path:
    """Where this user's key for the markers' MACs lives: outside every inbox, so that whoever
    can write into an inbox cannot sign a marker."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "model-toolkit" / "autoprune.key"


def marker_mac(body: str) -> str:
    path = marker_key_path()
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:  # another run made it first
            key = path.read_bytes()
        else:
            key = secrets.token_bytes(32)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key)
                handle.flush()
                os.fsync(handle.fileno())
    return hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def file_identity(stat: os.stat_result) -> list[int]:
    """What tells one file from another renamed over the same name: device, inode, size, time."""
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns]


def same_file(path: Path, identity: list[int]) -> bool:
    """Whether `path` still names the very regular file that was read (not one renamed over
    it, nor a link put in its place)."""
    try:
        now = path.lstat()
    except FileNotFoundError:
        return False
    return stat_module.S_ISREG(now.st_mode) and file_identity(now) == list(identity)


def estimated_size(plan: Plan) -> int:
    from ..formats.safetensors import header_bytes

    return len(header_bytes(plan)) + plan.nbytes
