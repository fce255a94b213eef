"""Executing a Plan: every entry's output values in order, chunk by chunk, cast on all cores,
with taps that see each chunk as it goes to the writer.

A Plan is data (plan.py); the writers in formats/ call output_chunks. Whatever must follow the
output bytes as they are written (each tensor's CRC-32 for autoprune's check, the SHA-256 of
the data for ModelSpec) is a Tap handed to the write, not a subclass of the plan.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .model import DEFAULT_CHUNK_BYTES

if TYPE_CHECKING:
    import numpy as np

    from .plan import Plan, PlanEntry

T = TypeVar("T")


class Tap(Protocol):
    """Sees the output as it is written: each chunk with its entry, then each entry's end
    (empty entries included, in plan order)."""

    def on_chunk(self, entry: PlanEntry, chunk: np.ndarray) -> None: ...

    def on_done(self, entry: PlanEntry) -> None: ...


def run_in_order(jobs: Iterable[Callable[[], T]], workers: int) -> Iterator[T]:
    """The jobs' results in their order, computed by `workers` threads (0: in this thread).

    Jobs are taken from `jobs` in the calling thread, in order, and at most `workers + 1` are
    in flight, so memory stays bounded.
    """
    if workers <= 0:
        for job in jobs:
            yield job()
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="mtk-work") as pool:
        in_flight: deque[Future[T]] = deque()
        for job in jobs:
            in_flight.append(pool.submit(job))
            while len(in_flight) > workers:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()


def cast_threads() -> int:
    """Threads that cast: MTK_CAST_THREADS if it is a number (0: cast in the calling thread),
    else the cores, at most 4 (more only contend for memory bandwidth)."""
    setting = os.environ.get("MTK_CAST_THREADS", "")
    return int(setting) if setting.isdigit() else min(4, os.cpu_count() or 1)


def _tagged(index: int, job: Callable[[], Any]) -> tuple[int, Any]:
    return index, job()


def output_chunks(
    plan: Plan,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    workers: int | None = None,
    taps: Sequence[Tap] = (),
) -> Iterator[np.ndarray]:
    """Every entry's output values in order, chunk by chunk (a chunk never spans two entries).

    Each chunk is read and cast in a worker (the reads stay close to sequential: at most
    `workers + 1` chunks are in flight, which also bounds memory), while the caller writes
    the chunks before it. Taps see each chunk before the caller does.
    """
    if workers is None:
        workers = cast_threads()
    entries = plan.entries
    jobs = (
        partial(_tagged, index, job)
        for index, entry in enumerate(entries)
        for _, job in entry.chunks(chunk_bytes)
    )
    finished = 0  # the entries before this index are complete
    for index, chunk in run_in_order(jobs, workers):
        while finished < index:
            for tap in taps:
                tap.on_done(entries[finished])
            finished += 1
        for tap in taps:
            tap.on_chunk(entries[index], chunk)
        yield chunk
    for entry in entries[finished:]:
        for tap in taps:
            tap.on_done(entry)
