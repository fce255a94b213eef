"""--watch: keep handling the inbox as files arrive, each once it has stopped growing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .job import Autopruner, Outcome, inbox_files, inbox_lock

MIN_PAUSE_SECONDS = 0.2  # between two looks at the inbox, however many events arrive
IDLE_SECONDS = 30.0  # with file events to wake us, a look this often is only a safety net


def start_observer(folder: Path, wake: threading.Event) -> Any | None:
    """A watchdog observer that sets `wake` on any change in `folder`; None where the
    platform cannot watch (no watchdog, inotify limits reached): the caller then polls."""
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        return None

    class Wake(FileSystemEventHandler):
        def on_any_event(self, event: object) -> None:
            wake.set()

    observer = Observer()
    try:
        observer.schedule(Wake(), str(folder), recursive=False)
        observer.start()
    except OSError:
        return None
    return observer


def watch(
    pruner: Autopruner,
    stop: threading.Event,
    on_outcome: Callable[[Outcome], None],
    poll_seconds: float = 2.0,
    use_events: bool = True,
) -> None:
    """Handle inbox files until `stop` is set. A file is taken when its size and time have not
    changed between two looks and it is older than the settle time: a download in progress is
    never touched. `stop` is checked between files, so a file in progress is finished."""
    inbox = pruner.layout.inbox
    wake = threading.Event()
    with inbox_lock(inbox):
        observer = start_observer(inbox, wake) if use_events else None
        try:
            for outcome in pruner.recover():
                on_outcome(outcome)
            last_look: dict[Path, tuple[int, int]] = {}
            while not stop.is_set():
                wake.clear()
                pending = _look(pruner, stop, on_outcome, last_look)
                pause = poll_seconds if pending or observer is None else IDLE_SECONDS
                deadline = time.monotonic() + pause
                time.sleep(MIN_PAUSE_SECONDS)
                while not (stop.is_set() or wake.is_set()) and time.monotonic() < deadline:
                    wake.wait(0.25)
        finally:
            if observer is not None:
                observer.stop()
                observer.join()


def _look(
    pruner: Autopruner,
    stop: threading.Event,
    on_outcome: Callable[[Outcome], None],
    last_look: dict[Path, tuple[int, int]],
) -> bool:
    """Process the settled files; True while some file is still changing."""
    pending = False
    present = inbox_files(pruner.layout.inbox)
    for gone in set(last_look) - set(present):
        del last_look[gone]
    for path in present:
        if stop.is_set():
            break
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        signature = (stat.st_size, stat.st_mtime_ns)
        if last_look.get(path) != signature:
            last_look[path] = signature
            pending = True
            continue
        outcome = pruner.process(path)
        if outcome.status == "waiting":
            pending = True
        else:
            last_look.pop(path, None)
            on_outcome(outcome)
    return pending
