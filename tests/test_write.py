"""Writers: torch zip files that torch loads bit-equal, conversions equal to torch's, atomicity."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import model_toolkit as mtk
from conftest import ALL_DTYPES, as_bytes, assert_same_tensors, peak_rss_kib, sample_tensor
from model_toolkit.plan import PlanEntry


def convert_file(source, output, precision="keep", **kwargs):
    with mtk.open(source) as model:
        plan = mtk.convert(model, mtk.precision_dtype(precision))
        return mtk.write_plan(plan, output, **kwargs)


def test_torch_zip_output_loads_in_torch_bit_equal(tmp_path, mixed_state_dict):
    source = tmp_path / "in.pt"
    torch.save({"state_dict": mixed_state_dict, "global_step": 12}, source)
    out = tmp_path / "out.ckpt"
    convert_file(source, out)
    for kwargs in ({"weights_only": True}, {"weights_only": True, "mmap": True}):
        loaded = torch.load(out, **kwargs)
        assert loaded["global_step"] == 12
        assert_same_tensors(loaded["state_dict"], mixed_state_dict)


def test_torch_zip_storages_are_64_byte_aligned(tmp_path):
    plan_source = tmp_path / "in.safetensors"
    save_file({f"w{i}": torch.randn(i + 1, 3) for i in range(20)}, plan_source)
    out = tmp_path / "out.pt"
    convert_file(plan_source, out)
    raw = out.read_bytes()
    with zipfile.ZipFile(out) as archive:
        records = [i for i in archive.infolist() if "/data/" in i.filename]
        assert len(records) == 20
        for info in records:
            name_length, extra_length = np.frombuffer(
                raw[info.header_offset + 26 : info.header_offset + 30], "<u2"
            )
            start = info.header_offset + 30 + int(name_length) + int(extra_length)
            assert start % 64 == 0, info.filename
            assert info.compress_type == zipfile.ZIP_STORED


@pytest.mark.parametrize("target", ["safetensors", "ckpt"])
@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_e5m2"])
def test_convert_matches_torch_to(tmp_path, target, precision):
    """Floats cast exactly as torch's .to(dtype) (NaN, inf, subnormals); ints untouched."""
    float32 = sample_tensor(torch.float32, (64, 64), 1)  # random bits: every class of value
    tensors = {
        "w32": float32,
        "w64": sample_tensor(torch.float64, (64, 32), 2),
        "w16": sample_tensor(torch.float16, (64, 32), 3),
        "wbf": sample_tensor(torch.bfloat16, (32, 64), 4),
        "ids": torch.arange(77).reshape(1, 77),
        "flag": torch.tensor([True, False]),
        "t": float32.t(),  # non-contiguous
    }
    source = tmp_path / "in.pt"
    torch.save(tensors, source)
    output = tmp_path / f"out.{target}"
    convert_file(source, output, precision)
    loaded = (
        load_file(output)
        if target == "safetensors"
        else torch.load(output, weights_only=True)["state_dict"]
    )
    torch_dtype = {
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
        "fp32": torch.float32,
        "fp8_e4m3fn": torch.float8_e4m3fn,
        "fp8_e5m2": torch.float8_e5m2,
    }[precision]
    expected = {
        name: t.to(torch_dtype) if t.is_floating_point() else t for name, t in tensors.items()
    }
    assert_same_tensors(loaded, expected)


def test_metadata_round_trips_between_formats(tmp_path):
    source = tmp_path / "in.ckpt"
    torch.save(
        {
            "state_dict": {"w": torch.ones(2)},
            "global_step": 5,
            "epoch": 1,
            "hparams": {"lr": 0.5, "tags": ["a", "b"]},
        },
        source,
    )
    as_safetensors = tmp_path / "mid.safetensors"
    convert_file(source, as_safetensors)
    with mtk.open(as_safetensors) as model:
        assert model.metadata == {
            "global_step": "5",
            "epoch": "1",
            "hparams": '{"lr": 0.5, "tags": ["a", "b"]}',
        }
    back = tmp_path / "back.ckpt"
    convert_file(as_safetensors, back)
    loaded = torch.load(back, weights_only=True)
    assert loaded["global_step"] == "5"
    assert loaded["hparams"] == '{"lr": 0.5, "tags": ["a", "b"]}'
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_existing_output_is_kept_without_overwrite(tmp_path):
    source = tmp_path / "in.safetensors"
    save_file({"w": torch.ones(3)}, source)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(mtk.OutputExistsError, match=r"exists$"):
        convert_file(source, out)
    assert out.read_bytes() == b"precious"
    convert_file(source, out, overwrite=True)
    assert torch.equal(load_file(out)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors", "out.safetensors"]


def test_interrupted_write_leaves_nothing(tmp_path):
    """A failure in the middle of the data: no output, no temporary file, old file intact."""
    source = tmp_path / "in.safetensors"
    save_file({"a": torch.ones(1000), "b": torch.ones(1000)}, source)

    def explode(chunk, start):
        raise KeyboardInterrupt

    for existing in (False, True):
        out = tmp_path / "out.safetensors"
        if existing:
            out.write_bytes(b"old")
        with mtk.open(source) as model:
            plan = mtk.convert(model)
            plan.entries[1] = PlanEntry("b", plan.entries[1].reads, plan.entries[1].dtype, explode)
            with pytest.raises(KeyboardInterrupt):
                mtk.write_plan(plan, out, overwrite=True)
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == (["in.safetensors", "out.safetensors"] if existing else ["in.safetensors"])
        if existing:
            assert out.read_bytes() == b"old"


def test_killed_write_never_leaves_a_partial_output(tmp_path):
    """SIGKILL during a write: the output path never holds a partial file."""
    source = tmp_path / "in.safetensors"
    save_file({f"w{i}": torch.randn(512, 512) for i in range(24)}, source)  # 24 MiB
    out = tmp_path / "out.safetensors"
    script = (
        "import model_toolkit as m, sys\n"
        "with m.open(sys.argv[1]) as f:\n"
        "    m.write_plan(m.convert(f, m.precision_dtype('fp16')), sys.argv[2], chunk_bytes=65536,"
        " progress=lambda d, t: print(d, flush=True))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(source), str(out)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    process.stdout.readline()  # it has started writing
    process.kill()
    process.wait()
    assert not out.exists()
    temps = [p for p in tmp_path.iterdir() if p.name.endswith(".mtk-tmp")]
    assert all(p.name.startswith(".out.safetensors.") for p in temps)


def test_write_memory_is_bounded_by_the_chunk(tmp_path):
    """Converting 768 MiB of fp32 to fp16 stays far below the size of the data."""
    source = tmp_path / "big.safetensors"
    count = 12
    # Build the file sparse: header, then 64 MiB of zero floats per tensor, without writing them.
    size = 64 * 1024 * 1024
    entries = {
        f"w{i}": {"dtype": "F32", "shape": [size // 4], "data_offsets": [i * size, (i + 1) * size]}
        for i in range(count)
    }
    raw = json.dumps(entries).encode()
    raw += b" " * (-len(raw) % 8)
    with open(source, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + count * size)
    peak_kib = peak_rss_kib("m.convert(f, m.precision_dtype('fp16'))", source, tmp_path / "o.pt")
    assert peak_kib < 200 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB for 768 MiB of data"
    assert os.path.getsize(tmp_path / "o.pt") > count * size // 2


def test_in_memory_tensors_write_like_file_tensors(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    ref = mtk.TensorRef.from_array("x", values, mtk.DTYPES["F32"])
    plan = mtk.Plan([PlanEntry("x", ref, mtk.DTYPES["BF16"])])
    out = mtk.write_plan(plan, tmp_path / "x.safetensors")
    assert torch.equal(load_file(out)["x"], torch.from_numpy(values).to(torch.bfloat16))
    _ = (ALL_DTYPES, as_bytes)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_early_writeback_hints_only_what_is_written(tmp_path, monkeypatch, suffix):
    """Writeback is asked for ranges already written, in order, never past the writing point;
    the file reads back bit-equal."""
    from model_toolkit import write as write_module

    monkeypatch.setattr(write_module.EarlyWriteback, "LAG", 1 << 20)
    monkeypatch.setattr(write_module.EarlyWriteback, "STEP", 1 << 20)
    hints: list[tuple[int, int]] = []
    real_fadvise = os.posix_fadvise

    def recording(fd, offset, length, advice):
        assert advice == os.POSIX_FADV_DONTNEED
        assert offset + length <= os.fstat(fd).st_size  # only bytes already in the file
        hints.append((offset, length))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    rng = np.random.default_rng(0)
    tensors = {
        f"w{i}": torch.from_numpy(rng.standard_normal(300_000, np.float32)) for i in range(8)
    }
    source = tmp_path / "in.safetensors"
    save_file(tensors, source)
    out = tmp_path / f"out{suffix}"
    convert_file(source, out, chunk_bytes=256 << 10)
    assert len(hints) >= 5
    assert [offset for offset, _ in hints] == [0] + [
        sum(hints[i][1] for i in range(k)) for k in range(1, len(hints))
    ]
    loaded = (
        load_file(out)
        if suffix == ".safetensors"
        else torch.load(out, weights_only=True)["state_dict"]
    )
    assert_same_tensors(loaded, tensors)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_taps_see_every_tensor_in_order_empty_ones_included(tmp_path, suffix):
    """The per-tensor CRC-32 tap (autoprune's check) and the data hash (ModelSpec) see exactly
    the bytes written, in one pass, whatever the format (the zip writer once stopped reading
    the stream before the last tensor's end, and its CRC was never recorded)."""
    import hashlib
    import zlib

    from model_toolkit.metadata import DataHash
    from model_toolkit.model import TensorRef
    from model_toolkit.plan import Plan, PlanEntry
    from model_toolkit.verify import TensorChecksums

    rng = np.random.default_rng(5)
    arrays = {
        "a": rng.standard_normal((300, 700)).astype(np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "b": rng.standard_normal(17).astype(np.float32),
    }
    f32 = mtk.dtypes.DTYPES["F32"]
    entries = [
        PlanEntry(name, TensorRef.from_array(name, values, f32), f32)
        for name, values in arrays.items()
    ]
    checks, data_hash = TensorChecksums(), DataHash()
    mtk.write_plan(
        Plan(entries), tmp_path / f"out{suffix}", chunk_bytes=1 << 16, taps=[checks, data_hash]
    )
    assert list(checks.records) == ["a", "empty", "b"]
    for name, values in arrays.items():
        assert checks.records[name].crc32 == zlib.crc32(values.tobytes())
    assert (
        data_hash.digest.digest()
        == hashlib.sha256(b"".join(v.tobytes() for v in arrays.values())).digest()
    )


def test_a_state_dict_only_checkpoint_is_the_tensors_alone(tmp_path):
    """What torch.load + load_state_dict users expect (the webui's preview decoders)."""
    from model_toolkit.model import TensorRef
    from model_toolkit.plan import Plan, PlanEntry

    f32 = mtk.dtypes.DTYPES["F32"]
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    entry = PlanEntry("1.weight", TensorRef.from_array("1.weight", values, f32), f32)
    plan = Plan([entry], {"modeltoolkit.history": "[]"}, state_dict_only=True)
    out = mtk.write_plan(plan, tmp_path / "decoder.pth")
    loaded = torch.load(out, weights_only=True)
    assert list(loaded) == ["1.weight"]
    torch.nn.Linear(4, 3, bias=False).load_state_dict({"weight": loaded["1.weight"]})
    assert np.array_equal(loaded["1.weight"].numpy(), values)
