"""Running a reader on an untrusted file in a worker process that may die, hang or bloat.

The readers are bounded by budgets of their own (pickle_scan, the header limits), but whoever
serves many files to many people (`mtk scan` over a hub's uploads, the web UI's Advanced tab
parsing every file in the folders) must also survive what no budget foresaw: a crash in C, a
loop, memory. A WorkerPool runs each call in a long-lived worker process, with a time limit
and an address-space limit; a worker that crashes or overruns is killed and the call raises
IsolatedError saying so, and the next call gets a fresh worker. Calls from several threads run
side by side, each in its own worker, so one slow file holds up only its own caller.

Written out rather than with concurrent.futures.ProcessPoolExecutor: there a worker killed by a
crash breaks the whole pool (BrokenProcessPool), and a hanging call is waited for forever.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, TypeVar

from .errors import ModelToolkitError

T = TypeVar("T")
GIB = 1 << 30

# A worker's first code, run by the builtin exec in the new process, so that nothing of ours is
# unpickled before the package is importable there from where this process imported it. A
# webui loads the extension from its own folder and puts sys.path back after each script it
# loads, and a worker is given the parent's sys.path: one started with `_serve` as its target
# died at once in a real Forge ("No module named 'model_toolkit'").
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOT = """
import sys
if package_root not in sys.path:
    sys.path.insert(0, package_root)
from model_toolkit.isolated import _serve
_serve(connection)
"""


class IsolatedError(ModelToolkitError):
    """The worker died, ran out of time or ran out of memory: nothing of its work is used."""


def default_context() -> Any:
    """forkserver where there is one: workers are forked from a clean process that imported
    the readers once, not from a caller with threads (gradio's, ours) that fork may deadlock.
    Its preload is set to our modules, so that no host's __main__ is imported again."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["model_toolkit.isolated", "model_toolkit.formats"])
        return context
    return multiprocessing.get_context("spawn")


class _Worker:
    # One start at a time: with fork, a worker forked by another thread in the middle of this
    # one's start would inherit its pipe and sentinel, and this one's death would go unseen.
    _starting = threading.Lock()

    def __init__(self, context: Any) -> None:
        with self._starting:
            self.connection, theirs = context.Pipe()
            names = {"connection": theirs, "package_root": PACKAGE_ROOT}
            self.process = context.Process(target=exec, args=(_BOOT, names), daemon=True)
            self.process.start()
            theirs.close()

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join(5)
        self.connection.close()

    def why_dead(self) -> str:
        self.process.join(5)
        code = self.process.exitcode
        return f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"


class WorkerPool:
    """Long-lived worker processes, each running one call at a time (thread-safe)."""

    def __init__(self, context: Any = None) -> None:
        self._context = context or default_context()
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def call(
        self,
        func: Callable[..., T],
        *args: Any,
        timeout: float,
        memory: int | None = None,
        what: str = "the reader",
    ) -> T:
        """`func(*args)` in a worker: its result, its ModelToolkitError re-raised, or
        IsolatedError if the worker died, took over `timeout` seconds or over `memory`
        bytes of address space. `func` must be importable by name (a module's function)."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(self._context)
        try:
            worker.connection.send((func, args, memory))
            # The process's sentinel, not only the pipe: a forked sibling may hold a copy of
            # the pipe's other end, and then a dead worker's pipe never reads as closed.
            ready = wait([worker.connection, worker.process.sentinel], timeout)
            if not ready:
                worker.kill()
                raise IsolatedError(f"{what} timed out after {timeout:.0f} s")
            if worker.connection not in ready:
                raise EOFError
            kind, value = worker.connection.recv()
        except (EOFError, OSError):
            why = worker.why_dead()
            worker.kill()
            raise IsolatedError(f"{what} crashed ({why})") from None
        with self._lock:
            self._idle.append(worker)
        if kind == "memory":
            raise IsolatedError(f"{what} ran out of memory (limit {memory / GIB:.1f} GiB)")
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, []
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.connection.send(None)
            worker.kill()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(connection: Connection) -> None:
    """A worker's loop: (func, args, memory) in, ("ok" | "error" | "memory", value) out."""
    try:
        import resource
    except ImportError:  # Windows: no address-space limit; the time limit still holds
        resource = None  # type: ignore[assignment]
    hard = resource.getrlimit(resource.RLIMIT_AS)[1] if resource else None
    while True:
        try:
            job = connection.recv()
        except EOFError:
            return
        if job is None:
            return
        func, args, memory = job
        if resource is not None:
            soft = memory if memory is not None else hard
            if hard not in (None, resource.RLIM_INFINITY) and soft is not None:
                soft = min(soft, hard)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        try:
            reply: tuple[str, Any] = ("ok", func(*args))
        except MemoryError:
            reply = ("memory", None)
        except ModelToolkitError as exc:
            reply = ("error", exc)
        except Exception as exc:  # a bug: one line, as the CLI would say it
            text = f"internal error ({exc.__class__.__name__}: {exc})"
            reply = ("error", ModelToolkitError(text))
        try:
            connection.send(reply)
        except MemoryError:
            connection.send(("memory", None))
