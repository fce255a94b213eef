"""Parsed key lists kept between runs, so that identifying a file does not parse text.

The lists stay plain text in the package (one `name [shape]` a line, reviewed as data); a
command that needs one reads it in marshal form from the user's cache instead, made the first
time it was parsed. marshal is the standard library's own format for code objects: loading a
list from it takes a third of the time parsing its text does (4 ms against 12 for the dozen
lists a checkpoint is matched against), and a derived LoRA list (a rule applied to a base list)
costs no more than a plain one. JSON and pickle are slower; pickle would also run code.

A cached list is named by what it was made from: the package version, and the size and
modification time of each source file. An edited list or registry (an editable install, a
new release) has another name, so a stale entry is never read; a missing, unreadable or
corrupt one is made again, and a cache that cannot be written (a read-only home) only costs
the parse. The cache holds nothing a user's files put there: only what this package made from
its own data.
"""

from __future__ import annotations

import contextlib
import marshal
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..version import __version__

KeyList = list[tuple[str, tuple[int, ...]]]


def cache_dir() -> Path:
    """Where parsed lists are kept: the user's cache folder (XDG on Linux, LOCALAPPDATA on
    Windows), one subfolder per package version."""
    base = os.environ.get("XDG_CACHE_HOME") or os.environ.get("LOCALAPPDATA")
    root = Path(base) if base else Path.home() / ".cache"
    return root / "model-toolkit" / f"keys-{__version__}-m{marshal.version}"


def cached(tag: str, sources: Sequence[Path], make: Callable[[], KeyList]) -> KeyList:
    """The list `make` returns, read from the cache when one made from the same sources is
    there. `tag` names the list; `sources` are the files it is made from."""
    try:
        stamps = [os.stat(path) for path in sources]
    except OSError:
        return make()  # a source that cannot be read: let `make` say why
    stamp = "+".join(f"{s.st_size:x}.{s.st_mtime_ns:x}" for s in stamps)
    path = cache_dir() / f"{tag}@{stamp}.marshal"  # no list name has an @
    try:
        value = marshal.loads(path.read_bytes())
    except (OSError, EOFError, ValueError, TypeError):
        value = None
    if _is_key_list(value):
        return list(value)
    keys = make()
    _store(path, tag, keys)
    return keys


def _is_key_list(value: object) -> bool:
    """What a cache entry must be: a tuple of (name, shape) pairs (its first pair checked;
    the rest were written by the same code)."""
    if not isinstance(value, tuple):
        return False
    if not value:
        return True
    first = value[0]
    return (
        isinstance(first, tuple)
        and len(first) == 2
        and isinstance(first[0], str)
        and isinstance(first[1], tuple)
    )


def _store(path: Path, tag: str, keys: KeyList) -> None:
    """Write an entry atomically (a concurrent reader sees the whole entry or none) and drop
    the entries of the same list made from older sources; any failure leaves the cache as it
    was, and costs the next run a parse."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(marshal.dumps(tuple(keys)))
        os.replace(temporary, path)
        for old in path.parent.glob(f"{tag}@*.marshal"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
