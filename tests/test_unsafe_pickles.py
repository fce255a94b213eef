"""A zoo of malicious pickles: opening must refuse each one, name what it asks for, run nothing.

Every payload, if executed, would create a sentinel file; the tests check that it never appears.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import model_toolkit as mtk


class Reduce:
    """An object that pickles as `func(*args)`: the classic code-execution payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def touch_command(sentinel: Path) -> str:
    return f"touch {sentinel}"


def payloads(sentinel: Path) -> dict[str, tuple[object, str]]:
    """name -> (object to pickle, the global the error must name)."""
    command = touch_command(sentinel)
    code = f"open({str(sentinel)!r}, 'w').close()"
    return {
        "os.system": (Reduce(os.system, command), f"{os.system.__module__}.system"),
        "builtins.eval": (Reduce(builtins.eval, code), "builtins.eval"),
        "builtins.exec": (Reduce(builtins.exec, code), "builtins.exec"),
        "builtins.__import__": (Reduce(builtins.__import__, "os"), "builtins.__import__"),
        "builtins.getattr": (Reduce(builtins.getattr, "text", "upper"), "builtins.getattr"),
        "subprocess.Popen": (
            Reduce(subprocess.Popen, ["touch", str(sentinel)]),
            "subprocess.Popen",
        ),
        "subprocess.call": (Reduce(subprocess.call, ["touch", str(sentinel)]), "subprocess.call"),
    }


def assert_refused(path: Path, sentinel: Path, global_name: str) -> None:
    with pytest.raises(mtk.UnsafeFileError) as info:
        mtk.open(path)
    assert str(info.value) == f"{path.name} is unsafe: it calls {global_name}"
    assert not sentinel.exists()


@pytest.mark.parametrize("name", list(payloads(Path("x"))))
@pytest.mark.parametrize("legacy", [False, True])
def test_payload_nested_deep_in_state_dict_is_refused(tmp_path, name, legacy):
    sentinel = tmp_path / "pwned"
    payload, global_name = payloads(sentinel)[name]
    checkpoint = {
        "state_dict": {"model.w": torch.ones(2), "model.deep": {"deeper": [1, {"x": payload}]}},
        "global_step": 1,
    }
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    assert_refused(path, sentinel, global_name)


def zip_checkpoint_with_pickle(path: Path, data_pkl: bytes) -> None:
    """A torch zip checkpoint whose data.pkl is exactly `data_pkl`."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def hand_written(sentinel: Path) -> dict[str, tuple[bytes, str]]:
    """Opcode-level payloads the standard pickler would not produce."""
    cmd = touch_command(sentinel).encode()
    posix = os.system.__module__.encode()
    string = b"X" + struct.pack("<I", len(cmd)) + cmd
    return {
        # protocol 0 INST: module, name, then args from the mark, instantiated directly
        "INST": (b"(S'" + cmd + b"'\ni" + posix + b"\nsystem\n.", f"{posix.decode()}.system"),
        # OBJ: class and args on the stack after a mark
        "OBJ": (b"\x80\x02(c" + posix + b"\nsystem\n" + string + b"o.", f"{posix.decode()}.system"),
        # NEWOBJ: cls.__new__(cls, *args)
        "NEWOBJ": (b"\x80\x02csubprocess\nPopen\n(" + string + b"tR.", "subprocess.Popen"),
        "NEWOBJ_EX": (
            b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\nsubprocess\x8c\x05Popen"
            b"\x93" + string + b"\x85}\x92.",
            "subprocess.Popen",
        ),
        # STACK_GLOBAL (protocol 4) with names pushed as strings
        "STACK_GLOBAL": (
            b"\x80\x04\x8c"
            + bytes([len(posix)])
            + posix
            + b"\x8c\x06system\x93"
            + string
            + b"\x85R.",
            f"{posix.decode()}.system",
        ),
        # code hidden in BUILD: an allowed object whose state carries a malicious call
        "BUILD": (
            b"\x80\x02ccollections\nOrderedDict\n)R}X\x04\x00\x00\x00evil"
            b"c" + posix + b"\nsystem\n" + string + b"\x85Rsb.",
            f"{posix.decode()}.system",
        ),
        # persistent id whose tuple smuggles a call
        "persistent_load": (
            b"\x80\x02(X\x07\x00\x00\x00storagec" + posix + b"\nsystem\n" + string + b"\x85RtQ.",
            f"{posix.decode()}.system",
        ),
        # Python 2 spelling of builtins
        "__builtin__.eval": (b"c__builtin__\neval\n(X\x04\x00\x00\x001+1_tR.", "builtins.eval"),
        # torch's own loaders are code execution too
        "torch.load": (b"\x80\x02ctorch\nload\n(X\x01\x00\x00\x00xtR.", "torch.load"),
        "numpy runstring": (
            b"\x80\x02cnumpy.testing._private.utils\nrunstring\n(X\x01\x00\x00\x00xtR.",
            "numpy.testing._private.utils.runstring",
        ),
    }


@pytest.mark.parametrize("name", list(hand_written(Path("x"))))
def test_hand_written_payload_in_zip_is_refused(tmp_path, name):
    sentinel = tmp_path / "pwned"
    data, global_name = hand_written(sentinel)[name]
    path = tmp_path / "evil.pt"
    zip_checkpoint_with_pickle(path, data)
    assert_refused(path, sentinel, global_name)


@pytest.mark.parametrize("name", ["OBJ", "NEWOBJ", "STACK_GLOBAL", "BUILD"])
def test_hand_written_payload_in_legacy_file_is_refused(tmp_path, name):
    sentinel = tmp_path / "pwned"
    data, global_name = hand_written(sentinel)[name]
    header = b"".join(
        pickle.dumps(obj, protocol=2)
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True})
    )
    path = tmp_path / "evil.pt"
    path.write_bytes(header + data + pickle.dumps([], protocol=2))
    assert_refused(path, sentinel, global_name)


def test_each_payload_really_runs_in_plain_pickle(tmp_path):
    """Guard for the zoo itself: the standard unpickler does run these (so refusing matters)."""
    sentinel = tmp_path / "pwned"
    data, _ = hand_written(sentinel)["STACK_GLOBAL"]
    pickle.loads(data)
    assert sentinel.exists()


def test_cli_reports_unsafe_file_in_one_line(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "model.ckpt"
    torch.save(
        {"state_dict": {"w": torch.ones(1)}, "x": Reduce(os.system, f"touch {sentinel}")}, path
    )
    result = subprocess.run(
        [sys.executable, "-m", "model_toolkit", "keys", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr == f"error: model.ckpt is unsafe: it calls {os.system.__module__}.system\n"
    assert result.stdout == ""
    assert not sentinel.exists()


def test_unsupported_torch_tensor_kind_is_named(tmp_path):
    path = tmp_path / "sparse.pt"
    torch.save({"s": torch.eye(3).to_sparse()}, path)
    with pytest.raises(mtk.FormatError, match="_rebuild_sparse_tensor, which is not supported"):
        mtk.open(path)


def test_allow_listed_names_are_never_imported():
    """The allow-list maps names to our stand-ins; no module outside the package is imported."""
    from model_toolkit.formats.unpickler import ALLOWED_GLOBALS

    for value in ALLOWED_GLOBALS.values():
        module = getattr(value, "__module__", None) or type(value).__module__
        assert module.startswith(("model_toolkit", "builtins")), value
    _ = io
