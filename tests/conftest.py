"""Shared helpers: key lists kept in tests/data, and torch-built oracle files."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from model_toolkit.architectures.keylists import KeyList, load_path

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True, scope="session")
def _state_outside_home(tmp_path_factory):
    """Autoprune keeps its marker key in the user's state folder, and identification its
    parsed key lists in the cache folder: the tests use their own."""
    import os

    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


def key_list(name: str) -> KeyList:
    """A real key+shape list copied from the reference dumps (tests/data/keys/NAME.txt)."""
    return load_path(DATA / "keys" / f"{name}.txt")


def as_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor, in C order, whatever its dtype."""
    flat = tensor.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def assert_same_tensors(ours: dict, theirs: dict) -> None:
    """Same names, dtypes, shapes and bits (NaN payloads included)."""
    assert list(ours) == list(theirs) or set(ours) == set(theirs)
    for name, tensor in theirs.items():
        other = ours[name]
        assert other.dtype == tensor.dtype, name
        assert tuple(other.shape) == tuple(tensor.shape), name
        assert as_bytes(other) == as_bytes(tensor), name


def numpy_to_torch(array: np.ndarray, torch_dtype: torch.dtype) -> torch.Tensor:
    """A numpy array (ml_dtypes included) as a torch tensor of the same bits."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return torch.from_numpy(flat.copy()).view(torch_dtype).reshape(array.shape)


ALL_DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.complex64,
]


def sample_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random bit patterns of any dtype (so NaNs and odd values are included)."""
    generator = torch.Generator().manual_seed(seed)
    itemsize = torch.empty((), dtype=dtype).element_size()
    count = int(np.prod(shape)) * itemsize
    raw = torch.randint(0, 256, (count,), dtype=torch.uint8, generator=generator)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


@pytest.fixture
def mixed_state_dict() -> dict[str, torch.Tensor]:
    """Every dtype, plus the layouts torch can save: views, transposes, shared storages."""
    tensors = {
        f"t.{str(d).split('.')[-1]}": sample_tensor(d, (3, 5), i) for i, d in enumerate(ALL_DTYPES)
    }
    base = sample_tensor(torch.float32, (6, 8), 99)
    tensors["view.transposed"] = base.t()  # non-contiguous, shares base's storage
    tensors["view.rows"] = base[2:5]  # storage offset
    tensors["view.columns"] = base[:, 1:7:2]  # strided
    tensors["view.base"] = base
    tensors["scalar"] = torch.tensor(1.5)
    tensors["empty"] = torch.zeros((0, 4))
    return tensors


def write_sparse_safetensors(path, entries, dtype="F16", fill=None, metadata=None):
    """A real-sized .safetensors whose data is holes (zeros) except the tensors in `fill`,
    with `metadata` (str -> str) as its `__metadata__`.

    Real names and shapes cost no disk: a multi-GB checkpoint takes a few KB.
    """
    import json
    import struct

    from model_toolkit.dtypes import DTYPES

    fill = fill or {}
    header, position, offsets = {}, 0, {}
    for name, shape in entries:
        dt = (
            DTYPES[fill[name][1]]
            if name in fill and isinstance(fill[name], tuple)
            else DTYPES[dtype]
        )
        size = int(np.prod(shape)) * dt.itemsize
        header[name] = {
            "dtype": dt.name,
            "shape": list(shape),
            "data_offsets": [position, position + size],
        }
        offsets[name] = position
        position += size
    if metadata:
        header = {"__metadata__": dict(metadata), **header}
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    base = 8 + len(raw)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(base + position)
        for name, values in fill.items():
            array = values[0] if isinstance(values, tuple) else values
            handle.seek(base + offsets[name])
            handle.write(np.ascontiguousarray(array).tobytes())
    return path


def shapes_of(entries):
    return {name: tuple(shape) for name, shape in entries}


def with_prefix(entries, prefix):
    return [(prefix + name, shape) for name, shape in entries]


# The last line of a script run by run_python: the process's peak RSS in KiB. VmHWM, not
# ru_maxrss: Linux carries ru_maxrss across exec, so a child forked from this (torch-sized)
# pytest process would report pytest's peak.
PRINT_PEAK_RSS_KIB = (
    "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
)


def run_python(script: str, *args, env=None, timeout: float = 300) -> str:
    """Run `script` in a fresh Python with `args` as sys.argv[1:]; it must succeed. Its stdout."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def peak_rss_kib(plan_expression: str, source, output) -> int:
    """Run `write_plan(<plan_expression>)` in a fresh Python and return its peak RSS in KiB.

    `plan_expression` sees the opened source as `f` and the package as `m`.
    """
    script = (
        "import model_toolkit as m, sys\n"
        "with m.open(sys.argv[1]) as f:\n"
        f"    m.write_plan({plan_expression}, sys.argv[2])\n" + PRINT_PEAK_RSS_KIB
    )
    return int(run_python(script, source, output))


def run_mtk(*args, cwd=None, timeout: float = 300, check: bool = False):
    """`mtk ARGS` as a user runs it, in a fresh process: the CompletedProcess (text output).
    With `check`, it must succeed. The one way the tests run the command."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "model_toolkit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@contextmanager
def running_ui(root: Path):
    """`mtk ui --models-dir root` on a free port of 127.0.0.1, until the block ends: its port."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "model_toolkit", "ui", "--models-dir", root, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("mtk ui did not start: " + (process.stdout.read() if process.stdout else ""))
    try:
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=20)
