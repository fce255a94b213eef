"""Emits the data.pkl of a torch checkpoint, opcode by opcode, without torch.

The standard pickler cannot do this job: it writes a global only after importing it to check
that it exists (`torch._utils._rebuild_tensor_v2` needs torch installed). So we emit protocol 2
opcodes ourselves, for exactly the shapes torch itself writes: a dict with a "state_dict"
OrderedDict of tensors (storages by persistent id) and plain metadata values beside it.
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, Any

from ..dtypes import DType
from ..errors import UsageError

if TYPE_CHECKING:
    from ..plan import Plan

PROTO = b"\x80\x02"
STOP = b"."
MARK = b"("
EMPTY_DICT = b"}"
EMPTY_LIST = b"]"
EMPTY_TUPLE = b")"
SETITEMS = b"u"
APPENDS = b"e"
TUPLE = b"t"
REDUCE = b"R"
BINPERSID = b"Q"
NONE = b"N"
NEWTRUE = b"\x88"
NEWFALSE = b"\x89"


class _Emitter:
    def __init__(self) -> None:
        self.parts: list[bytes] = [PROTO]

    def op(self, *codes: bytes) -> None:
        self.parts.extend(codes)

    def global_(self, module: str, name: str) -> None:
        self.parts.append(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def string(self, text: str) -> None:
        raw = text.encode("utf-8", "surrogatepass")
        self.parts.append(b"X" + struct.pack("<I", len(raw)) + raw)

    def integer(self, value: int) -> None:
        if 0 <= value < 256:
            self.parts.append(b"K" + bytes([value]))
        elif -(2**31) <= value < 2**31:
            self.parts.append(b"J" + struct.pack("<i", value))
        else:
            raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.parts.append(b"\x8a" + bytes([len(raw)]) + raw)

    def value(self, value: Any) -> None:
        """Plain data only: what metadata can hold."""
        if value is None:
            self.op(NONE)
        elif value is True or value is False:
            self.op(NEWTRUE if value else NEWFALSE)
        elif isinstance(value, int):
            self.integer(value)
        elif isinstance(value, float):
            self.parts.append(b"G" + struct.pack(">d", value))
        elif isinstance(value, str):
            self.string(value)
        elif isinstance(value, (list, tuple)):
            self.op(EMPTY_LIST)
            if value:
                self.op(MARK)
                for item in value:
                    self.value(item)
                self.op(APPENDS)
        elif isinstance(value, dict):
            self.op(EMPTY_DICT)
            if value:
                self.op(MARK)
                for key, item in value.items():
                    self.string(str(key))
                    self.value(item)
                self.op(SETITEMS)
        else:
            raise UsageError(f"cannot store {type(value).__name__} in a checkpoint")

    def int_tuple(self, values: tuple[int, ...]) -> None:
        self.op(MARK)
        for v in values:
            self.integer(v)
        self.op(TUPLE)

    def tensor(self, key: str, dtype: DType, shape: tuple[int, ...]) -> None:
        """torch._utils._rebuild_tensor_v2/v3(storage, 0, shape, stride, False, OrderedDict())."""
        numel = math.prod(shape)
        typed = dtype.storage is not None
        self.global_("torch._utils", "_rebuild_tensor_v2" if typed else "_rebuild_tensor_v3")
        self.op(MARK)
        # persistent id: ('storage', storage type, key, location, size)
        self.op(MARK)
        self.string("storage")
        if typed:
            self.global_("torch", dtype.storage or "")
        else:
            self.global_("torch.storage", "UntypedStorage")
        self.string(key)
        self.string("cpu")
        self.integer(numel if typed else numel * dtype.itemsize)
        self.op(TUPLE, BINPERSID)
        self.integer(0)
        self.int_tuple(shape)
        stride, step = [], 1
        for size in reversed(shape):
            stride.append(step)
            step *= size
        self.int_tuple(tuple(reversed(stride)))
        self.op(NEWFALSE)
        self.global_("collections", "OrderedDict")
        self.op(EMPTY_TUPLE, REDUCE)
        if not typed:
            self.global_("torch", dtype.torch_name)
        self.op(TUPLE, REDUCE)

    def bytes(self) -> bytes:
        return b"".join(self.parts) + STOP


def checkpoint(plan: Plan) -> bytes:
    """data.pkl for {"state_dict": OrderedDict(name -> tensor), **plan.metadata}, or for the
    OrderedDict alone when the plan says `state_dict_only`."""
    out = _Emitter()
    if plan.state_dict_only:
        out.global_("collections", "OrderedDict")
        out.op(EMPTY_TUPLE, REDUCE)
        _tensors(out, plan)
        return out.bytes()
    out.op(EMPTY_DICT, MARK)
    out.string("state_dict")
    out.global_("collections", "OrderedDict")
    out.op(EMPTY_TUPLE, REDUCE)
    _tensors(out, plan)
    for key, value in plan.metadata.items():
        if key == "state_dict":
            continue
        out.string(str(key))
        out.value(value)
    out.op(SETITEMS)
    return out.bytes()


def _tensors(out: _Emitter, plan: Plan) -> None:
    """The plan's tensors set into the OrderedDict on top of the stack, by name."""
    if plan.entries:
        out.op(MARK)
        for index, entry in enumerate(plan.entries):
            out.string(entry.name)
            out.tensor(str(index), entry.dtype, entry.shape)
        out.op(SETITEMS)
