"""WorkerPool: a call that crashes, hangs or bloats costs one worker, never the caller."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import model_toolkit as mtk
from model_toolkit.isolated import GIB, IsolatedError, WorkerPool


def crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def hang(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def bloat() -> int:
    return len(bytearray(3 * GIB))


def refuse() -> None:
    raise mtk.FormatError("x.ckpt is damaged")


def pid() -> int:
    return os.getpid()


@pytest.fixture
def pool():
    with WorkerPool() as made:  # the default context: forkserver here
        yield made


def test_results_errors_and_a_reused_worker(pool):
    first = pool.call(pid, timeout=60)
    assert pool.call(pid, timeout=60) == first  # one worker, kept
    with pytest.raises(mtk.FormatError, match=r"x\.ckpt is damaged"):
        pool.call(refuse, timeout=60)
    assert pool.call(pid, timeout=60) == first  # an error of ours does not cost the worker


def test_crash_hang_and_memory_each_cost_one_worker(pool):
    first = pool.call(pid, timeout=60)
    with pytest.raises(IsolatedError, match=r"the reader crashed \(signal 11\)"):
        pool.call(crash, timeout=60)
    with pytest.raises(IsolatedError, match="the reader timed out after 1 s"):
        pool.call(hang, 60, timeout=1)
    with pytest.raises(IsolatedError, match=r"ran out of memory \(limit 1.0 GiB\)"):
        pool.call(bloat, timeout=60, memory=GIB)
    second = pool.call(pid, timeout=60)
    assert second != first
    assert pool.call(hang, 0, timeout=60) == "slept"


def test_a_slow_call_holds_up_only_its_own_caller(pool):
    pool.call(pid, timeout=60)  # the forkserver is up
    slow = threading.Thread(target=lambda: pool.call(hang, 20, timeout=60))
    slow.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert pool.call(hang, 0, timeout=60) == "slept"
    assert time.monotonic() - started < 10
    slow.join()


def test_workers_find_the_package_where_the_caller_found_it(tmp_path):
    """As in a webui: the package imported from a folder that is then taken off sys.path (the
    webui restores sys.path after loading each extension script). The workers still start."""
    import subprocess
    import sys

    from model_toolkit.isolated import PACKAGE_ROOT

    script = (
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from model_toolkit.isolated import WorkerPool\n"
        "from model_toolkit.text import printable\n"
        "sys.path.remove(sys.argv[1])\n"
        "with WorkerPool() as pool:\n"
        "    print(pool.call(printable, 'in a worker', timeout=60))\n"
    )
    # -S: no site-packages, so the package is found only where the caller put it.
    result = subprocess.run(
        [sys.executable, "-S", "-c", script, PACKAGE_ROOT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "in a worker"
