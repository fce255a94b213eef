"""Plan -> file, atomically: a temporary file in the target folder, fsync, then rename.

At no moment does the output path hold a partial file: it either does not exist (or still holds
what was there before, with --overwrite) or holds the complete, synced result.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import ModelToolkitError, OutputExistsError, UsageError
from .execute import Tap
from .formats import WRITERS
from .model import DEFAULT_CHUNK_BYTES
from .plan import Plan

ProgressCallback = Callable[[int, int], None]  # (bytes written so far, total bytes)
TEMP_SUFFIX = ".mtk-tmp"


def temp_path_for(output: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A fresh hidden name next to the output, so the final rename stays on one filesystem."""
    return output.parent / f".{output.name}.{secrets.token_hex(4)}{suffix}"


def write_plan(
    plan: Plan,
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    finalize: Callable[[Path], None] | None = None,
    taps: Sequence[Tap] = (),
) -> Path:
    """Write `plan` to `output` in the format its extension names, streamed and atomic.
    `taps` see the output as it is written; `finalize` may amend the complete temporary file
    (using what the taps saw) before it gets its name."""
    output = Path(output)
    check_output(output, overwrite)
    temp = write_temp(plan, output, progress=progress, chunk_bytes=chunk_bytes, taps=taps)
    try:
        if finalize is not None:
            finalize(temp)
        commit(temp, output, overwrite)
    finally:
        if temp.exists():
            temp.unlink()
    return output


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that cannot or must not be written."""
    if output.suffix.lower() not in WRITERS:
        raise UsageError(
            f"cannot tell the format of {output.name}: "
            "use .safetensors, .gguf, .ckpt, .pt, .pth or .bin"
        )
    if output.is_dir():
        raise UsageError(f"{output} is a directory")
    if not output.parent.is_dir():
        raise UsageError(f"folder {output.parent} does not exist")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists")


def write_temp(
    plan: Plan,
    output: Path,
    *,
    progress: ProgressCallback | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    suffix: str = TEMP_SUFFIX,
    taps: Sequence[Tap] = (),
) -> Path:
    """Write `plan` into a fresh temporary file next to `output` (in `output`'s format) and
    fsync it. The caller commits it, or removes it; on any error it is already removed."""
    writer = WRITERS.get(output.suffix.lower())
    if writer is None:
        raise UsageError(f"cannot tell the format of {output.name}")
    total = plan.nbytes
    done = 0

    temp = temp_path_for(output, suffix)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb", buffering=1 << 20) as out, EarlyWriteback(fd) as writeback:

            def advance(count: int) -> None:
                nonlocal done
                done += count
                writeback.written_up_to(out.tell())
                if progress is not None:
                    progress(done, total)

            writer(plan, out, advance, chunk_bytes, taps)
            out.flush()
            writeback.close()
            os.fsync(out.fileno())
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ModelToolkitError(f"cannot write {output}: {exc.strerror or exc}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


class EarlyWriteback:
    """Has the kernel write the output to disk while the rest of it is produced.

    Without it every byte waits in the page cache until the final fsync, which then takes as
    long as the disk needs for the whole file (~1.5 s for 2 GB here), after the work is done.
    posix_fadvise(DONTNEED) on what was written some time ago starts its writeback (Linux) and
    lets those pages go once clean, so a 7 GB output also does not push the user's other files
    out of the page cache. The calls run in a thread, as submitting I/O can block.
    """

    LAG = 256 << 20  # bytes left alone behind the writing position, still being written
    STEP = 128 << 20  # bytes handed over at a time

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._flushed = 0
        self._ranges: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if hasattr(os, "posix_fadvise"):
            self._thread = threading.Thread(target=self._run, name="mtk-writeback", daemon=True)
            self._thread.start()

    def written_up_to(self, position: int) -> None:
        end = position - self.LAG
        if self._thread is not None and end - self._flushed >= self.STEP:
            self._ranges.put((self._flushed, end - self._flushed))
            self._flushed = end

    def _run(self) -> None:
        while (item := self._ranges.get()) is not None:
            with contextlib.suppress(OSError):  # a hint: filesystems may refuse it
                os.posix_fadvise(self._fd, *item, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Wait for the hints given so far (before the file descriptor is closed)."""
        if self._thread is not None:
            self._ranges.put(None)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> EarlyWriteback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def commit(temp: Path, output: Path, overwrite: bool = False) -> None:
    """Give a complete temporary file its final name, durably; never replaces a file that
    appeared meanwhile unless `overwrite`."""
    try:
        _move_into_place(temp, output, overwrite)
        sync_folder(output.parent)
    except OSError as exc:
        raise ModelToolkitError(f"cannot write {output}: {exc.strerror or exc}") from None


def _move_into_place(temp: Path, output: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temp, output)
        return
    # link() refuses to replace an existing name, so a file that appeared meanwhile is kept.
    try:
        os.link(temp, output)
    except FileExistsError:
        raise OutputExistsError(f"{output} exists") from None
    except OSError:  # filesystems without hard links (FAT, some network shares)
        if output.exists():
            raise OutputExistsError(f"{output} exists") from None
        os.replace(temp, output)
        return
    temp.unlink()


def sync_folder(folder: Path) -> None:
    """Make the rename itself durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomically(path: Path, text: str, suffix: str = TEMP_SUFFIX) -> None:
    """A small text file (a marker, a reason, a cache) replaced whole or not at all."""
    temp = temp_path_for(path, suffix)
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        sync_folder(path.parent)
    finally:
        temp.unlink(missing_ok=True)
