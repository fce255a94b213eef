"""Hostile files built as an attacker builds them (issue: hardening), one class per section.

Code-execution payloads are proven live first: the real `torch.load(weights_only=False)` runs
them in a throwaway subprocess and the sentinel file appears. Only then does it mean something
that we refuse them and name what they call.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import model_toolkit as mtk
from conftest import PRINT_PEAK_RSS_KIB, run_mtk, run_python
from model_toolkit.formats import pickle_scan, unpickler
from model_toolkit.formats.torch_legacy import MAGIC_NUMBER, PROTOCOL_VERSION
from model_toolkit.model import TensorRef
from model_toolkit.storage import InMemory, ZipMember

SYSTEM = f"{os.system.__module__}.system"  # posix.system here


class Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class StoragePid:
    """Pickles as torch's persistent id for a storage: ('storage', type, key, 'cpu', numel)."""

    def __init__(self, key: str, numel: int, storage_type=torch.FloatStorage):
        self.pid = ("storage", storage_type, key, "cpu", numel)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, StoragePid) else None


def torch_pickle(obj, protocol: int = 2) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=protocol).dump(obj)
    return out.getvalue()


def tensor(pid: StoragePid, offset: int, shape: tuple, stride: tuple) -> Reduce:
    return Reduce(
        torch._utils._rebuild_tensor_v2,
        pid,
        offset,
        shape,
        stride,
        False,
        collections.OrderedDict(),
    )


def write_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes], **members) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", b"little")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
        for name, raw in members.items():
            archive.writestr(name, raw)
        archive.writestr("archive/version", b"3\n")
    return path


def proven_live(path: Path, sentinel: Path) -> None:
    """torch.load(weights_only=False) on the file runs the payload (in a throwaway process)."""
    code = (
        "import sys, torch\n"
        "try: torch.load(sys.argv[1], weights_only=False)\n"
        "except Exception: pass"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=120)
    assert sentinel.exists(), "the payload is not live: it proves nothing"
    sentinel.unlink()


def refused_though_live(path: Path, sentinel: Path, message: str) -> None:
    """The payload runs in torch.load, and opening the file with us refuses it by name (and,
    since it was refused, runs nothing: the sentinel stays absent)."""
    proven_live(path, sentinel)
    with pytest.raises(mtk.UnsafeFileError, match=message):
        mtk.open(path)
    assert not sentinel.exists()


mtk_cli = run_mtk


def payload(sentinel: Path) -> Reduce:
    return Reduce(os.system, f"touch {sentinel}")


# ---------------------------------------------------------------------------------------------
# 1. Out-of-bounds reads


def test_storage_described_twice_is_refused(tmp_path):
    """The first id is small and real; the second claims 2**30 elements for a strided view."""
    small, huge = StoragePid("0", 4), StoragePid("0", 1 << 30)
    state = {"a": tensor(small, 0, (4,), (1,)), "b": tensor(huge, 0, (1 << 20,), (1000,))}
    path = write_zip(tmp_path / "oob.ckpt", torch_pickle(state), {"0": b"\0" * 16})
    with pytest.raises(mtk.FormatError, match="storage 0 is described two ways"):
        mtk.open(path)
    result = mtk_cli("convert", str(path), str(tmp_path / "out.safetensors"))
    assert result.returncode == 2 and not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(
    ("shape", "stride", "message"),
    [
        ((5,), (1,), "reaches element 4 of a storage of 4"),
        ((2, 2), (3, 1), "reaches element 4 of a storage of 4"),
        ((1 << 20, 1 << 20), (0, 0), "repeats a storage of 4 elements"),
    ],
)
def test_every_view_is_bounded_by_the_real_storage(shape, stride, message):
    """The one check every reader goes through: TensorRef itself, against the storage's bytes."""
    storage = InMemory(b"\0" * 16)
    with pytest.raises(mtk.FormatError, match=message):
        TensorRef("w", mtk.dtypes.DTYPES["F32"], shape, storage, 0, stride)
    TensorRef("ok", mtk.dtypes.DTYPES["F32"], (2, 2), storage, 0, (1, 2))  # a .t() is fine


def test_small_expanded_buffer_is_still_read(tmp_path):
    """CLIP's position_ids are saved as an expand()ed view: stride 0 over a small storage."""
    ids = torch.arange(77).expand((3, -1))
    path = tmp_path / "expanded.ckpt"
    torch.save({"ids": ids}, path)
    with mtk.open(path) as model:
        assert model.tensors["ids"].read().tolist() == ids.tolist()


# ---------------------------------------------------------------------------------------------
# 2. Polyglots


def zip_and_safetensors(path: Path, data_pkl: bytes) -> Path:
    """A torch zip whose first 8 bytes read as a safetensors header length (67 MB, which a
    stored padding member makes fit) and whose 9th is the JSON's opening brace."""
    write_zip(path, data_pkl, {}, **{"archive/pad": b" " * 0x04034B50})
    with open(path, "r+b") as handle:
        handle.seek(4)
        handle.write(b"\0\0\0\0{")  # version needed and flags, then the compression method
    return path


def test_zip_that_also_reads_as_safetensors_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    path = zip_and_safetensors(tmp_path / "poly.ckpt", torch_pickle(payload(sentinel)))
    refused_though_live(path, sentinel, f"calls {SYSTEM}")
    # Without a payload it is still two formats at once.
    clean = zip_and_safetensors(tmp_path / "clean.ckpt", torch_pickle({"x": 1}))
    with pytest.raises(mtk.FormatError, match="reads as both a safetensors file and a zip"):
        mtk.open(clean)


def v7_tar(path: Path, members: dict[str, bytes], first_name: bytes) -> Path:
    """A tar without the `ustar` magic (V7), whose first header's name is `first_name`."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        names = [first_name.decode("latin-1"), *members]
        for name, raw in zip(names, [b"", *members.values()], strict=True):
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    raw = bytearray(out.getvalue())
    position = 0
    while position + 512 <= len(raw) and any(raw[position : position + 512]):
        header = raw[position : position + 512]
        header[257:265] = b"\0" * 8  # no magic, no version: V7
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        raw[position : position + 512] = header
        size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        position += 512 + (size + 511) // 512 * 512
    path.write_bytes(bytes(raw))
    return path


def test_legacy_file_that_is_also_a_v7_tar_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    magic = pickle.dumps(MAGIC_NUMBER, protocol=2)[:60]
    storages = pickle.dumps(1, protocol=2) + pickle.dumps(payload(sentinel), protocol=2)
    path = v7_tar(tmp_path / "poly.pt", {"storages": storages}, magic)
    assert path.read_bytes()[257:262] != b"ustar"
    refused_though_live(path, sentinel, f"calls {SYSTEM}")
    result = mtk_cli("scan", str(tmp_path), "--db", str(tmp_path / "index.db"))
    assert "poly.pt" in result.stdout + result.stderr
    assert f"calls {SYSTEM}" in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# 3. Shared stand-ins mutated by BUILD


def build_on_global(state) -> bytes:
    """A pickle that gives torch.FloatStorage (a global: one object for every file) a state."""
    return b"\x80\x02ctorch\nFloatStorage\n" + pickle.dumps(state, protocol=2)[2:-1] + b"b."


@pytest.mark.parametrize(
    "state",
    [{"dtype": None}, (None, {"dtype": None})],  # __dict__ state, then slot state (setattr)
)
def test_build_on_a_shared_stand_in_is_refused_and_changes_nothing(tmp_path, state):
    evil = write_zip(tmp_path / "evil.ckpt", build_on_global(state), {})
    good = tmp_path / "good.ckpt"
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, good)
    with pytest.raises(mtk.FormatError, match="sets the state of a class or function"):
        mtk.open(evil)
    with mtk.open(good) as model:  # the same process, after the hostile file
        assert model.tensors["w"].read().tolist() == [0, 1, 2, 3]
    assert unpickler.ALLOWED_GLOBALS["torch.FloatStorage"].dtype.name == "F32"


def test_build_cannot_change_a_checked_tensor(tmp_path):
    """BUILD on a tensor stub (made by REDUCE, so not a global) cannot rewrite its shape."""
    stub = tensor(StoragePid("0", 4), 0, (4,), (1,))
    raw = torch_pickle({"w": stub})
    # ... REDUCE, then BUILD {"shape": (1 << 30,)} before the SETITEM.
    state = pickle.dumps({"shape": (1 << 30,), "stride": (1,)}, protocol=2)[2:-1]
    position = raw.rindex(b"R")
    patched = raw[: position + 1] + state + b"b" + raw[position + 1 :]
    path = write_zip(tmp_path / "evil.ckpt", patched, {"0": b"\0" * 16})
    with pytest.raises(mtk.FormatError, match="sets the state of a TensorStub"):
        mtk.open(path)


# ---------------------------------------------------------------------------------------------
# 4. The danger named wherever a pickle stream is found


LONE_PICKLES = {
    "bare.pt": lambda evil: pickle.dumps(evil, protocol=2),
    "protocol-0.pt": lambda evil: pickle.dumps(evil, protocol=0),
    # A legacy file whose first pickle, where torch.load expects the magic number, is the payload.
    "magic.pt": lambda evil: pickle.dumps(evil, protocol=2) + pickle.dumps(PROTOCOL_VERSION),
}


@pytest.mark.parametrize("name", list(LONE_PICKLES))
def test_a_pickle_that_is_no_checkpoint_names_the_callable(tmp_path, name):
    sentinel = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(LONE_PICKLES[name](payload(sentinel)))
    refused_though_live(path, sentinel, f"{name} is unsafe: it calls {SYSTEM}")


def test_zip_with_two_data_pkl_names_the_callable(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "two.ckpt"
    with zipfile.ZipFile(path, "w") as archive, pytest.warns(UserWarning, match="Duplicate"):
        archive.writestr("archive/data.pkl", torch_pickle(payload(sentinel)))
        archive.writestr("archive/data.pkl", torch_pickle({"x": 1}))
        archive.writestr("archive/version", b"3\n")
    refused_though_live(path, sentinel, f"calls {SYSTEM}")


def test_trailing_pickle_after_a_legacy_file_is_named(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "tail.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes() + pickle.dumps(payload(sentinel), protocol=2))
    with pytest.raises(mtk.UnsafeFileError, match=f"calls {SYSTEM}"):
        mtk.open(path)
    clean = tmp_path / "tail2.pt"
    torch.save({"w": torch.ones(2)}, clean, _use_new_zipfile_serialization=False)
    clean.write_bytes(clean.read_bytes() + b"\0" * 100)
    with pytest.raises(mtk.FormatError, match="100 bytes of trailing data"):
        mtk.open(clean)


# ---------------------------------------------------------------------------------------------
# 5-6. Bounded work: nesting, memo, opcodes, shared references, tensor counts


def deep_key(depth: int) -> bytes:
    """{((((...)...),): 1} nested `depth` deep: CPython hashes the key recursively, in C."""
    return b"\x80\x02}" + b")" + b"\x85" * depth + b"K\x01s."


def deep_frozenset(depth: int) -> bytes:
    return b"\x80\x02cbuiltins\nfrozenset\n)" + b"\x85" * depth + b"\x85\x85R."


@pytest.mark.parametrize("build", [deep_key, deep_frozenset])
def test_deep_nesting_is_refused_not_a_crash(tmp_path, build):
    path = write_zip(tmp_path / "deep.ckpt", build(1_000_000), {})
    result = mtk_cli("inspect", str(path))
    assert result.returncode == 2, result.stderr
    assert "nests deeper than 200 levels" in result.stderr


@pytest.mark.parametrize(
    ("data_pkl", "message"),
    [
        (b"\x80\x02K\x01r\x00\x00\x00\x08.", "uses memo index 134217728"),  # LONG_BINPUT 2**27
        (b"\x80\x02" + b"]" * 5_000_000 + b".", "has too many opcodes"),
        (b"\x80\x02K\x01" + b"2" * 5_000_000 + b".", "has too many opcodes"),  # DUP, DUP...
    ],
)
def test_amplifying_pickles_are_refused_quickly_in_little_memory(tmp_path, data_pkl, message):
    path = tmp_path / "amp.ckpt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
    output = run_python(
        "import sys, model_toolkit as mtk\n"
        "try: mtk.open(sys.argv[1])\n"
        "except mtk.FormatError as e: print(e)\n" + PRINT_PEAK_RSS_KIB,
        str(path),
        timeout=60,
    )
    error, peak_kib = output.strip().splitlines()
    assert message in error
    assert int(peak_kib) < 200 * 1024


def billion_laughs(levels: int, width: int) -> bytes:
    """A list holding `width` references to a list holding `width` references to ... ."""
    out = bytearray(b"\x80\x02K\x01q\x00")  # memo 0: the innermost object
    for level in range(1, levels + 1):
        out += b"](" + bytes([0x68, level - 1]) * width + b"eq" + bytes([level])
    return bytes(out) + b"."


def test_shared_references_cannot_explode(tmp_path):
    path = write_zip(tmp_path / "laughs.ckpt", billion_laughs(9, 10), {})
    result = mtk_cli("keys", str(path), timeout=60)
    assert result.returncode == 2
    assert "expands to too many objects" in result.stderr


def test_too_many_tensor_names_are_refused(tmp_path):
    one = tensor(StoragePid("0", 4), 0, (4,), (1,))
    raw = torch_pickle({f"n{i}": one for i in range(200_001)})
    path = write_zip(tmp_path / "names.ckpt", raw, {"0": b"\0" * 16})
    with pytest.raises(mtk.FormatError, match="over 200,000 tensors"):
        mtk.open(path)


def test_huge_safetensors_header_is_refused_before_parsing(tmp_path):
    entries = {
        f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(250_000)
    }
    header = json.dumps(entries).encode()
    path = tmp_path / "many.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(mtk.FormatError, match="header lists 250,000 tensors"):
        mtk.open(path)


def test_strided_view_of_a_compressed_storage_streams(tmp_path):
    """A transposed tensor in a deflated zip: values bit-equal to torch, from a spill file."""
    weight = torch.randn(512, 384).t()
    plain = tmp_path / "plain.ckpt"
    torch.save({"w": weight}, plain)
    deflated = tmp_path / "deflated.ckpt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(deflated, "w") as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info), zipfile.ZIP_DEFLATED)
    with mtk.open(deflated) as model:
        ref = model.tensors["w"]
        assert isinstance(ref.storage, ZipMember) and not ref.is_contiguous
        assert (ref.read() == weight.numpy()).all()


# ---------------------------------------------------------------------------------------------
# 7. Every failure of a dependency is our error, with the file named


def test_huge_integers_are_refused_or_summarised(tmp_path):
    header = b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'
    path = tmp_path / "digits.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(mtk.FormatError, match="number too long"):
        mtk.open(path)
    shape = tensor(StoragePid("0", 4), 0, (10**5000,), (1,))
    bad = write_zip(tmp_path / "shape.ckpt", torch_pickle({"w": shape}), {"0": b"\0" * 16})
    with pytest.raises(mtk.FormatError, match="bad shape in pickle: <int>"):
        mtk.open(bad)
    meta = tmp_path / "meta.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 10**5000}, meta)
    result = mtk_cli("metadata", str(meta), "--json")
    assert result.returncode == 0, result.stderr
    assert "integer of 16610 bits" in result.stdout


def test_a_shape_numpy_cannot_describe_is_refused(tmp_path):
    """[0, 2**62, 2**62] holds nothing, yet numpy's zeros() of it raises "array is too big"."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}})
    path = tmp_path / "empty.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode())
    result = mtk_cli("diff", str(path), str(path))
    assert result.returncode == 2
    assert result.stderr == "error: empty.safetensors: tensor w has an impossible shape\n"


def test_bad_crc_in_a_deflated_storage_is_one_error_line(tmp_path):
    plain = tmp_path / "plain.ckpt"
    torch.save({"w": torch.randn(1000)}, plain)
    path = tmp_path / "crc.ckpt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info), zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename)
    raw = bytearray(path.read_bytes())
    crc_at = info.header_offset + 14  # the local header's CRC-32
    raw[crc_at] ^= 0xFF
    path.write_bytes(bytes(raw))
    # The central directory's CRC is the one zipfile checks: flip that one too.
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        directory = archive.start_dir
    position = bytes(raw).index(b"PK\x01\x02", directory)
    while position >= 0:
        name_length = struct.unpack("<H", raw[position + 28 : position + 30])[0]
        name = bytes(raw[position + 46 : position + 46 + name_length])
        if b"/data/" in name:
            raw[position + 16] ^= 0xFF
        position = bytes(raw).find(b"PK\x01\x02", position + 4)
    path.write_bytes(bytes(raw))
    result = mtk_cli("convert", str(path), str(tmp_path / "out.safetensors"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: crc.ckpt: cannot read plain/data/0 (Bad CRC-32")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()


def test_newobj_stand_ins_without_init_are_our_error(tmp_path):
    """NEWOBJ makes an instance without __init__: {"a": numpy array stand-in, "b": dtype}."""
    array = b"cnumpy.core.multiarray\n_reconstruct\n)\x81"
    dtype = b"cnumpy\ndtype\n)\x81"
    raw = b"\x80\x02}(X\x01\x00\x00\x00a" + array + b"X\x01\x00\x00\x00b" + dtype + b"u."
    path = write_zip(tmp_path / "newobj.ckpt", raw, {})
    result = mtk_cli("metadata", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["a"] is None
    built = b"\x80\x02}X\x01\x00\x00\x00a" + array + b"(K\x01)" + dtype + b"\x89C\x00tbs."
    path = write_zip(tmp_path / "newobj2.ckpt", built, {})
    result = mtk_cli("metadata", str(path), "--json")
    assert result.returncode == 2, result.stderr
    assert "numpy dtype without a type code" in result.stderr


# ---------------------------------------------------------------------------------------------
# 8. File-borne text printed to a terminal


def test_escape_sequences_in_names_never_reach_the_terminal(tmp_path):
    from safetensors.torch import save_file

    name = "w\x1b]52;c;cHduZWQ=\x07\x1b[2J\nerror: forged"
    path = tmp_path / "escapes.safetensors"
    save_file({name: torch.ones(1)}, str(path), metadata={"note\x1b[2J": "x\ny\x9b"})
    for command in (["keys", str(path)], ["inspect", str(path)], ["metadata", str(path)]):
        result = mtk_cli(*command)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout, command
        assert "\x9b" not in result.stdout, command
        assert "\nerror: forged" not in result.stdout, command


def test_newline_in_a_storage_key_cannot_forge_an_error_line(tmp_path):
    stub = tensor(StoragePid("0\nerror: all good", 4), 0, (4,), (1,))
    path = write_zip(tmp_path / "key.ckpt", torch_pickle({"w": stub}), {})
    result = mtk_cli("inspect", str(path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "0\\x0aerror: all good" in result.stderr


# ---------------------------------------------------------------------------------------------
# The scan's budgets, as properties


def nested_lists(depth: int) -> bytes:
    return b"\x80\x02" + b"]" + b"]" * (depth - 1) + b"a" * (depth - 1) + b"."


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=60), st.integers(min_value=1, max_value=60))
def test_depth_is_refused_exactly_beyond_the_limit(depth, limit):
    limits = pickle_scan.Limits(depth=limit)
    raw = nested_lists(depth)
    allowed = unpickler.is_allowed
    if depth <= limit:
        assert pickle_scan.scan(raw, 0, len(raw), "x", allowed, limits).depth == depth
        value = pickle.loads(raw)
        for _ in range(depth - 1):
            (value,) = value
        assert value == []
    else:
        with pytest.raises(mtk.FormatError, match="nests deeper"):
            pickle_scan.scan(raw, 0, len(raw), "x", allowed, limits)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=10, max_value=5000),
)
def test_expansion_is_counted_exactly(levels, width, limit):
    raw = billion_laughs(levels, width)
    expanded = sum(width**level for level in range(levels + 1))
    limits = pickle_scan.Limits(expanded=limit)
    if expanded <= limit:
        pickle_scan.scan(raw, 0, len(raw), "x", unpickler.is_allowed, limits)
    else:
        with pytest.raises(mtk.FormatError, match="expands to too many objects"):
            pickle_scan.scan(raw, 0, len(raw), "x", unpickler.is_allowed, limits)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_the_scan_never_fails_otherwise(raw):
    """Arbitrary bytes: a scan result, or one of our errors; and it never passes what the
    standard unpickler then chokes on in a way we do not catch."""
    try:
        pickle_scan.scan(raw, 0, len(raw), "x", unpickler.is_allowed)
    except mtk.ModelToolkitError:
        return
    with contextlib.suppress(mtk.ModelToolkitError):
        unpickler.load(raw, 0, len(raw), "x")


def test_a_cycle_is_refused():
    raw = b"\x80\x02]q\x00h\x00a."  # l = []; l.append(l)
    with pytest.raises(mtk.FormatError, match="refers to itself"):
        pickle_scan.scan(raw, 0, len(raw), "x", unpickler.is_allowed)
