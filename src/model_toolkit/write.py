"""Plan -> file, atomically: a temporary file in the target folder, fsync, then rename.

At no moment does the output path hold a partial file: it either does not exist (or still holds
what was there before, with --overwrite) or holds the complete, synced result.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from .errors import ModelToolkitError, OutputExistsError, UsageError
from .formats import WRITERS
from .model import DEFAULT_CHUNK_BYTES
from .plan import Plan

ProgressCallback = Callable[[int, int], None]  # (bytes written so far, total bytes)
TEMP_SUFFIX = ".mtk-tmp"


def temp_path_for(output: Path) -> Path:
    """A fresh hidden name next to the output, so the final rename stays on one filesystem."""
    return output.parent / f".{output.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def write_plan(
    plan: Plan,
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Path:
    """Write `plan` to `output` in the format its extension names, streamed and atomic."""
    output = Path(output)
    writer = WRITERS.get(output.suffix.lower())
    if writer is None:
        raise UsageError(
            f"cannot tell the format of {output.name}: use .safetensors, .ckpt, .pt, .pth or .bin"
        )
    if output.is_dir():
        raise UsageError(f"{output} is a directory")
    if not output.parent.is_dir():
        raise UsageError(f"folder {output.parent} does not exist")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists; use --overwrite to replace it")

    total = plan.nbytes
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    temp = temp_path_for(output)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            writer(plan, out, advance, chunk_bytes)
            out.flush()
            os.fsync(out.fileno())
        _move_into_place(temp, output, overwrite)
        _sync_folder(output.parent)
    except OSError as exc:
        raise ModelToolkitError(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        if temp.exists():
            temp.unlink()
    return output


def _move_into_place(temp: Path, output: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temp, output)
        return
    # link() refuses to replace an existing name, so a file that appeared meanwhile is kept.
    try:
        os.link(temp, output)
    except FileExistsError:
        raise OutputExistsError(f"{output} exists; use --overwrite to replace it") from None
    except OSError:  # filesystems without hard links (FAT, some network shares)
        if output.exists():
            raise OutputExistsError(f"{output} exists; use --overwrite to replace it") from None
        os.replace(temp, output)
        return
    temp.unlink()


def _sync_folder(folder: Path) -> None:
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
