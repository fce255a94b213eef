"""Reading torch checkpoints (zip and legacy) without torch, checked against torch.load."""

from __future__ import annotations

import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import model_toolkit as mtk
from conftest import as_bytes, sample_tensor
from model_toolkit.model import chunk_work


def read_all(path: Path) -> dict[str, bytes]:
    with mtk.open(path) as model:
        return {name: ref.read().tobytes() for name, ref in model.tensors.items()}


def chunked(path: Path, max_bytes: int) -> dict[str, bytes]:
    with mtk.open(path) as model:
        result = {}
        for name, ref in model.tensors.items():
            parts = [chunk.tobytes() for chunk in mtk.values(ref, max_bytes)]
            assert all(len(p) <= max(max_bytes, ref.dtype.itemsize) for p in parts)
            result[name] = b"".join(parts)
            # The same values through chunk_work (mapped where the bytes lie raw in the file).
            works = chunk_work(ref, max_bytes)
            seen = [work(lambda values: values.tobytes()) for _, work in works]
            assert b"".join(seen) == result[name], name
        return result


@pytest.mark.parametrize("legacy", [False, True])
def test_checkpoint_tensors_match_torch(tmp_path, mixed_state_dict, legacy):
    tensors = dict(mixed_state_dict)
    tensors["t.complex128"] = sample_tensor(torch.complex128, (2, 3), 77)
    if legacy:  # the legacy format predates untyped storages and these dtypes
        for name in ("t.float8_e4m3fn", "t.float8_e5m2", "t.uint16", "t.uint32", "t.uint64"):
            tensors.pop(name)
    path = tmp_path / "model.ckpt"
    torch.save(
        {"state_dict": tensors, "global_step": 7, "epoch": 2},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    with mtk.open(path) as model:
        assert model.format == ("torch-legacy" if legacy else "torch-zip")
        assert list(model.tensors) == list(tensors)
        assert model.metadata == {"global_step": 7, "epoch": 2}
        for name, tensor in tensors.items():
            ref = model.tensors[name]
            assert ref.shape == tuple(tensor.shape), name
            assert ref.dtype.torch_name == str(tensor.dtype).split(".")[-1], name
    expected = {name: as_bytes(t) for name, t in tensors.items()}
    assert read_all(path) == expected
    assert chunked(path, 16) == expected  # chunks smaller than a row, across strided views


def test_shared_storage_is_mapped_once(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    path = tmp_path / "shared.pt"
    torch.save({"a": base, "b": base[4:], "c": base.view(3, 4)}, path)
    with mtk.open(path) as model:
        storages = {id(model.tensors[n].storage) for n in "abc"}
        assert len(storages) == 1
        assert model.tensors["b"].storage_offset == 4
        assert model.tensors["b"].read().tolist() == list(range(4, 12))


def test_parameters_and_nested_dicts_are_reachable_by_dotted_names(tmp_path):
    vectors = torch.randn(2, 768)
    embedding = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(vectors)},
        "name": "my-style",
        "step": 1500,
    }
    path = tmp_path / "embedding.pt"
    torch.save(embedding, path)
    with mtk.open(path) as model:
        assert list(model.tensors) == ["string_to_param.*"]
        assert np.array_equal(model.tensors["string_to_param.*"].read(), vectors.numpy())
        assert model.metadata == {"string_to_token": {"*": 265}, "name": "my-style", "step": 1500}


def test_optimizer_state_outside_state_dict_is_kept_as_dotted_tensors(tmp_path):
    path = tmp_path / "full.ckpt"
    torch.save(
        {
            "state_dict": {"w": torch.ones(2)},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}, "lr": 0.1}],
        },
        path,
    )
    with mtk.open(path) as model:
        assert set(model.tensors) == {"w", "optimizer_states.0.state.0.exp_avg"}
        assert "optimizer_states" not in model.metadata


def test_opening_reads_no_tensor_data(tmp_path, monkeypatch):
    """Opening only touches the zip directory and data.pkl: reading storages is on demand."""
    path = tmp_path / "model.ckpt"
    torch.save({"w": torch.randn(1000, 1000)}, path)
    calls = []
    original = mtk.model.FileData.preadinto
    monkeypatch.setattr(
        mtk.model.FileData, "preadinto", lambda self, *a: calls.append(a) or original(self, *a)
    )
    with mtk.open(path) as model:
        assert model.tensors["w"].shape == (1000, 1000)
        assert calls == []
        assert model._data is not None and model._data._mmap is None


def test_big_endian_checkpoint(tmp_path):
    """A checkpoint written on a big-endian machine: byteorder record 'big', bytes swapped."""
    tensors = {"f": torch.randn(4, 3), "h": torch.randn(5).half(), "i": torch.arange(6)}
    little = tmp_path / "little.pt"
    torch.save(tensors, little)
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        itemsizes = {}
        for index, tensor in enumerate(tensors.values()):
            itemsizes[f"little/data/{index}"] = tensor.element_size()
        for info in src.infolist():
            data = src.read(info)
            if info.filename in itemsizes:
                size = itemsizes[info.filename]
                data = np.frombuffer(data, f"<u{size}").astype(f">u{size}").tobytes()
            if info.filename.endswith("byteorder"):
                data = b"big"
            dst.writestr(info.filename.replace("little/", "big/"), data)
    oracle = torch.load(big, weights_only=True)
    for name, tensor in tensors.items():
        assert torch.equal(oracle[name], tensor)  # torch itself agrees on the crafted file
    assert read_all(big) == {name: as_bytes(t) for name, t in tensors.items()}


def test_compressed_entries_are_streamed(tmp_path):
    tensors = {"w": torch.randn(300, 70), "t": torch.randn(30, 20).t()}
    stored = tmp_path / "stored.pt"
    torch.save(tensors, stored)
    deflated = tmp_path / "deflated.pt"
    with (
        zipfile.ZipFile(stored) as src,
        zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with mtk.open(deflated) as model:
        assert model.tensors["w"].byte_range is None  # not addressable in the file
    expected = {name: as_bytes(t) for name, t in tensors.items()}
    assert read_all(deflated) == expected
    assert chunked(deflated, 1000) == expected


def _fake_class(module: str, name: str) -> type:
    """A class pickled under another module's name, as Lightning's classes appear in a .ckpt."""
    cls = type(name, (), {"__module__": module})
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    setattr(sys.modules[module], name, cls)
    return cls


def test_lightning_entries_become_inert_metadata(tmp_path):
    checkpoint_cls = _fake_class("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
    callback_state = checkpoint_cls()
    callback_state.best_model_score = 0.5
    payload = {
        "state_dict": {"w": torch.ones(3)},
        "callbacks": {checkpoint_cls: {"monitor": "val/loss", "best": callback_state}},
        "pytorch-lightning_version": "1.4.2",
        "hparams": {"lr": np.float64(1e-4), "steps": np.int64(3), "size": torch.Size([2, 3])},
        "numbers": np.arange(4, dtype=np.int32),
    }
    path = tmp_path / "lightning.ckpt"
    torch.save(payload, path)
    with mtk.open(path) as model:
        meta = model.metadata
    callbacks = meta["callbacks"]["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"]
    assert callbacks["monitor"] == "val/loss"
    assert callbacks["best"]["state"] == {"best_model_score": 0.5}
    assert meta["hparams"] == {"lr": 1e-4, "steps": 3, "size": [2, 3]}
    assert meta["numbers"] == [0, 1, 2, 3]
    assert meta["pytorch-lightning_version"] == "1.4.2"


def test_plain_pickle_protocols(tmp_path):
    """torch.save with pickle protocols 2..5 all read the same."""
    tensors = {"a": torch.randn(2, 3), "b": torch.arange(3)}
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"p{protocol}.pt"
        torch.save(tensors, path, pickle_protocol=protocol)
        assert read_all(path) == {n: as_bytes(t) for n, t in tensors.items()}


def test_bare_tensor_and_list_roots(tmp_path):
    torch.save(torch.arange(3), tmp_path / "tensor.pt")
    torch.save([torch.ones(1), {"x": torch.zeros(1)}], tmp_path / "list.pt")
    with mtk.open(tmp_path / "tensor.pt") as model:
        assert list(model.tensors) == ["tensor"]
    with mtk.open(tmp_path / "list.pt") as model:
        assert list(model.tensors) == ["0", "1.x"]


def test_pickle_stream_stays_in_memory_bounds():
    """The unpickler reads from a bounded window: a lying length is truncation, not allocation."""
    from model_toolkit.formats import unpickler

    payload = b"\x80\x02B\xff\xff\xff\x7f"  # BINBYTES claiming 2 GiB, then nothing
    with pytest.raises(mtk.FormatError):
        unpickler.load(payload, 0, len(payload), "x.pt")
    assert pickle.dumps(1)  # stdlib untouched
    _ = sample_tensor
