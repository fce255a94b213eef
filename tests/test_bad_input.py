"""Bad input of every kind: one ModelToolkitError with a clear message; the CLI prints one line
and exits with status 2. Never a traceback, never a hang."""

from __future__ import annotations

import contextlib
import os
import random
import struct
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import model_toolkit as mtk
from conftest import run_mtk


@pytest.fixture
def good_ckpt(tmp_path):
    path = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"a": torch.randn(64, 64), "b": torch.arange(10)}}, path)
    return path


def refuse(path, message):
    with pytest.raises(mtk.ModelToolkitError, match=message):
        mtk.open(path)


def test_zero_length(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    refuse(path, "empty.safetensors is empty")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.ckpt"
    noise = bytearray(random.Random(0).randbytes(4096))
    noise[0] = 0x17  # not a pickle's first opcode (0x80), nor a GGUF's magic: noise alone
    path.write_bytes(bytes(noise))
    refuse(path, "not a safetensors, GGUF or torch checkpoint")


def test_directory_and_missing_path(tmp_path):
    refuse(tmp_path, "is a directory")
    refuse(tmp_path / "missing.ckpt", "cannot read .*missing.ckpt: No such file")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_checkpoint(tmp_path, good_ckpt, keep):
    raw = good_ckpt.read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(raw[: int(len(raw) * keep)])
    # If the header survived, reading the data must fail.
    with pytest.raises(mtk.ModelToolkitError), mtk.open(path) as model:
        for ref in model.tensors.values():
            ref.read()
            list(mtk.values(ref))


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "cut.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.randn(100)}, path)
    path.write_bytes(path.read_bytes()[:-10])
    refuse(path, "file truncated")


def test_truncated_legacy_file(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"a": torch.randn(1000)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    refuse(path, "truncated")
    path.write_bytes(raw[:40])
    refuse(path, "old.pt")


def rewrite_zip(source, target, change):
    """Copy a zip entry by entry, letting `change(name, data)` alter or drop (None) each."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = change(info.filename, src.read(info))
            if data is not None:
                dst.writestr(info.filename, data)


def test_zip_entry_missing(tmp_path, good_ckpt):
    bad = tmp_path / "bad.ckpt"
    rewrite_zip(good_ckpt, bad, lambda n, d: None if n.endswith("data/0") else d)
    refuse(bad, "storage good/data/0 is missing")
    rewrite_zip(good_ckpt, bad, lambda n, d: None if n.endswith("data.pkl") else d)
    refuse(bad, "no data.pkl")


def test_zip_entry_too_short(tmp_path, good_ckpt):
    bad = tmp_path / "bad.ckpt"
    rewrite_zip(good_ckpt, bad, lambda n, d: d[:7] if n.endswith("data/0") else d)
    refuse(bad, "has 7 bytes, needs 16384")


def test_zip_unsupported_compression(tmp_path, good_ckpt):
    """An entry whose compression method is unknown (patched into both headers)."""
    raw = bytearray(good_ckpt.read_bytes())
    with zipfile.ZipFile(good_ckpt) as archive:
        info = archive.getinfo("good/data/0")
    struct.pack_into("<H", raw, info.header_offset + 8, 99)  # local header
    position = raw.find(b"good/data/0", len(raw) - 4096) - 46  # its central directory record
    assert raw[position : position + 4] == b"PK\x01\x02"
    struct.pack_into("<H", raw, position + 10, 99)  # central directory entry
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(bytes(raw))
    refuse(bad, "unsupported compression 99")


def test_zip_bomb_data_pkl(tmp_path):
    """A deflated data.pkl that expands past the limit is refused without being expanded."""
    bad = tmp_path / "bomb.pt"
    with (
        zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("bomb/data.pkl", "w", force_zip64=True) as entry,
    ):
        for _ in range(300):
            entry.write(b"\0" * (1 << 20))
    assert bad.stat().st_size < 1 << 20
    refuse(bad, "data.pkl is too large")


def test_zip_with_garbage_pickle(tmp_path):
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("bad/data.pkl", b"\x80\x02}q\x00(X\x01")
    refuse(bad, "broken pickle")


def test_storage_view_past_its_storage_is_refused(tmp_path):
    """A pickle claiming a tensor larger than its storage must not read out of bounds."""
    path = tmp_path / "lie.pt"
    torch.save({"a": torch.zeros(4)}, path)
    bad = tmp_path / "bad.pt"
    rewrite_zip(
        path,
        bad,
        lambda n, d: d.replace(b"K\x04\x85", b"K\x40\x85") if n.endswith("data.pkl") else d,
    )
    refuse(bad, "reaches element 63 of a storage of 4")


def test_tar_format_is_named(tmp_path):
    path = tmp_path / "ancient.pt"
    path.write_bytes(b"\0" * 257 + b"ustar" + b"\0" * 250)
    refuse(path, "oldest \\(tar\\) format")


@settings(
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    deadline=None,
)
@given(st.integers(min_value=0, max_value=10_000), st.binary(min_size=1, max_size=8))
def test_corrupted_checkpoint_bytes(tmp_path, good_ckpt, position, garbage):
    """Bytes overwritten anywhere: the file opens and reads, or fails with our error."""
    raw = bytearray(good_ckpt.read_bytes())
    position %= len(raw)
    raw[position : position + len(garbage)] = garbage
    path = tmp_path / "corrupt.ckpt"
    path.write_bytes(bytes(raw))
    try:
        with mtk.open(path) as model:
            for ref in model.tensors.values():
                ref.read()
    except mtk.ModelToolkitError:
        pass


run_cli = run_mtk


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04broken", b"\x10" + b"\0" * 7])
def test_cli_one_line_and_status_2(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    for args in (("keys", path), ("convert", path, tmp_path / "out.ckpt")):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.ckpt").exists()


def test_fifo_and_devices_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    refuse(fifo, "is not a regular file")  # would hang forever if opened blocking
    refuse("/dev/null", "is not a regular file")


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "locked.ckpt"
    path.write_bytes(b"x")
    real_open = os.open

    def denied(target, *args, **kwargs):
        if str(target) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(target, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    refuse(path, "cannot read .*locked.ckpt: Permission denied")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_unpickler_on_arbitrary_bytes(raw):
    """Any byte string as data.pkl: a result, or one of our errors; never anything else."""

    from model_toolkit.formats import unpickler

    with contextlib.suppress(mtk.ModelToolkitError):
        unpickler.load(raw, 0, len(raw), "x.pt", lambda pid: unpickler.storage_stub(pid, "x.pt"))


def test_complex128_cannot_go_to_safetensors(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"c": torch.zeros(2, dtype=torch.complex128)}, path)
    with mtk.open(path) as model, pytest.raises(mtk.UsageError, match="cannot store complex128"):
        mtk.write_plan(mtk.convert(model), tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()
    with mtk.open(path) as model:
        mtk.write_plan(mtk.convert(model), tmp_path / "c.ckpt")
    assert torch.equal(
        torch.load(tmp_path / "c.ckpt", weights_only=True)["state_dict"]["c"],
        torch.zeros(2, dtype=torch.complex128),
    )
