"""The allow-list unpickler: reads torch checkpoints without executing anything they contain.

A pickle is a program: its GLOBAL opcodes name any importable callable and REDUCE calls it, which
is how a `.ckpt` runs `os.system`. We use the standard library's unpickler only as an opcode
interpreter and override `find_class`, the single door through which every global (GLOBAL,
STACK_GLOBAL, INST, OBJ, EXT*) enters: it never imports, and returns an inert stand-in of ours for
an allow-listed name, or refuses the file, naming the global. The objects a pickle can then call
(REDUCE, NEWOBJ, BUILD) are only those stand-ins, which record their arguments and nothing more.

Tensors come out as TensorStub (storage key, offset, shape, stride, dtype); the format modules
turn those into TensorRefs over the file's bytes.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..dtypes import BY_STORAGE, BY_TORCH_NAME, DType
from ..errors import FormatError, UnsafeFileError
from ..model import last_element
from ..text import printable
from . import pickle_scan

if TYPE_CHECKING:
    import numpy as np

# ---------------------------------------------------------------------------------------------
# What a pickle can produce


def _refuse_state(self: Any, state: Any) -> None:
    raise FormatError(f"pickle sets the state of a {type(self).__name__} (refused)")


# BUILD writes into an object's __dict__ even when its dataclass is frozen, and a stub changed
# after its checks would describe a tensor nobody checked: these have no __dict__ (slots) and
# a __setstate__ that refuses (else dataclass would add one that sets every field).
@dataclass(frozen=True, slots=True)
class StorageType:
    """Stand-in for torch.FloatStorage and friends; `dtype` is None for UntypedStorage."""

    name: str
    dtype: DType | None

    __setstate__ = _refuse_state


@dataclass(frozen=True, slots=True)
class StorageStub:
    """A storage named by the pickle's persistent id; its bytes live elsewhere in the file."""

    key: str
    dtype: DType | None  # None: untyped, the tensor's dtype decides
    numel: int  # elements of `dtype`, or bytes when untyped
    view: tuple[str, int, int] | None = None  # legacy format: (root key, offset, size)

    __setstate__ = _refuse_state


@dataclass(frozen=True, slots=True)
class TensorStub:
    storage: StorageStub
    dtype: DType
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    __setstate__ = _refuse_state


class InertObject:
    """Stand-in for an allow-listed class (Lightning callbacks, argparse.Namespace, ...).

    It records what the pickle gives it and does nothing else. Subclasses are made per name, so
    that the class itself can serve as a dict key, as old Lightning checkpoints use it.
    """

    qualified_name = "object"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        instance = super().__new__(cls)
        instance.__dict__["_args"] = args
        instance.__dict__["_state"] = None
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __setattr__(self, name: str, value: Any) -> None:
        state = self.__dict__.get("_state")
        if not isinstance(state, dict):
            state = self.__dict__["_state"] = {}
        state[name] = value

    def plain(self) -> Any:
        state = self.__dict__.get("_state")
        args = self.__dict__.get("_args") or ()
        result: dict[str, Any] = {"__class__": self.qualified_name}
        if args:
            result["args"] = to_plain(list(args))
        if state is not None:
            result["state"] = to_plain(state)
        return result


class InertOrderedDict(dict):
    """collections.OrderedDict: a plain dict (insertion-ordered) that ignores BUILD state.

    torch state dicts carry a `_metadata` attribute through BUILD; we have no use for it.
    """

    def __setstate__(self, state: Any) -> None:
        pass


class NumpyDType:
    """Stand-in for numpy.dtype(...) that only ever builds plain numeric dtypes.

    The class attributes are what an instance made by NEWOBJ (no __init__) has."""

    code: str | None = None
    byteorder = "<"

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(code, str) or code.lstrip("<>|=") not in _NUMPY_CODES:
            raise FormatError(f"unsupported numpy dtype {code!r} in pickle")
        self.code = code.lstrip("<>|=")
        self.byteorder = "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = "<" if state[1] in "|=" else state[1]

    def numpy(self) -> np.dtype:
        import numpy as np

        if self.code is None:
            raise FormatError("numpy dtype without a type code in pickle")
        return np.dtype(self.byteorder + self.code)


_NUMPY_CODES = {
    "b1",
    "i1",
    "i2",
    "i4",
    "i8",
    "u1",
    "u2",
    "u4",
    "u8",
    "f2",
    "f4",
    "f8",
    "c8",
    "c16",
    "?",
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "float16",
    "float32",
    "float64",
}
MAX_PLAIN_ARRAY = 4096  # numpy arrays longer than this are summarised in metadata


class NumpyArray:
    """Stand-in for numpy.core.multiarray._reconstruct(...) followed by BUILD."""

    value: Any = None  # what an instance made by NEWOBJ (no __init__) has

    def __init__(self, cls: Any = None, shape: Any = None, typecode: Any = None) -> None:
        self.value: Any = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], NumpyDType)):
            raise FormatError("malformed numpy array in pickle")
        _, shape, dtype, _, raw = state
        if not isinstance(raw, bytes) or not isinstance(shape, tuple):
            self.value = f"<numpy array {shape}>"
            return
        import numpy as np

        array = np.frombuffer(raw, dtype=dtype.numpy())
        if array.size > MAX_PLAIN_ARRAY:
            self.value = f"<numpy array {tuple(shape)} {array.dtype}>"
        else:
            self.value = array.astype(array.dtype.newbyteorder("=")).tolist()

    def plain(self) -> Any:
        return self.value


def to_plain(value: Any) -> Any:
    """Turn unpickled data into plain JSON-like data: metadata must be inert and printable.

    The pickle scan has bounded its depth and size and refused cycles, so this recursion ends."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        # Python refuses to print integers of over 4300 digits; no real metadata has one.
        return f"<integer of {value.bit_length()} bits>"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {_plain_key(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in value]
    if isinstance(value, (InertObject, NumpyArray)):
        return value.plain()
    if isinstance(value, type) and issubclass(value, InertObject):
        return value.qualified_name
    if isinstance(value, DType):
        return f"torch.{value.torch_name}"
    if isinstance(value, TensorStub):
        return f"<tensor {value.dtype.name} {list(value.shape)}>"
    return repr(value)


def _plain_key(key: Any) -> str:
    plain = to_plain(key)
    return plain if isinstance(plain, str) else str(plain)


# ---------------------------------------------------------------------------------------------
# The stand-ins for allow-listed globals


MAX_COUNT = (1 << 63) - 1  # torch's sizes, strides and offsets are int64


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise FormatError(f"bad {what} in pickle: {safe_repr(value)}")
    return value


def safe_repr(value: Any, limit: int = 120) -> str:
    """repr() for an error message: never raises (an int of 5000 digits cannot be printed)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return printable(text, limit)


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise FormatError(f"bad {what} in pickle: {safe_repr(value)}")
    return tuple(_count(v, what) for v in value)


def _make_tensor(
    storage: Any, storage_offset: Any, size: Any, stride: Any, dtype: DType | None = None
) -> TensorStub:
    if not isinstance(storage, StorageStub):
        raise FormatError("tensor without a storage in pickle")
    dtype = dtype or storage.dtype
    if dtype is None:
        raise FormatError("untyped storage without a dtype in pickle")
    offset = _count(storage_offset, "storage offset")
    shape = _dims(size, "shape")
    strides = _dims(stride, "stride")
    if len(shape) != len(strides):
        raise FormatError(f"shape {shape} and stride {strides} differ in length")
    available = storage.numel if storage.dtype is not None else storage.numel // dtype.itemsize
    if storage.view is not None:
        available = storage.view[2]  # a legacy view's elements count from the view's start
    if all(shape):
        last = last_element(offset, shape, strides)
        if last >= available:
            raise FormatError(
                f"tensor of shape {list(shape)} reaches element {last} of a storage of {available}"
            )
    return TensorStub(storage, dtype, offset, shape, strides)


def _rebuild_tensor(
    storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any
) -> TensorStub:
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> TensorStub:
    if not isinstance(dtype, DType):
        raise FormatError(f"bad dtype in pickle: {dtype!r}")
    return _make_tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data: Any, *_ignored: Any) -> TensorStub:
    if not isinstance(data, TensorStub):
        raise FormatError("parameter without a tensor in pickle")
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    if func not in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter):
        raise FormatError("unexpected rebuild function in pickle")
    if not isinstance(args, tuple):
        raise FormatError("bad rebuild arguments in pickle")
    return func(*args)


def _numpy_scalar(dtype: Any, raw: Any = None) -> Any:
    if not isinstance(dtype, NumpyDType) or not isinstance(raw, bytes):
        raise FormatError("malformed numpy scalar in pickle")
    import numpy as np

    values = np.frombuffer(raw, dtype=dtype.numpy())
    if values.size != 1:
        raise FormatError("malformed numpy scalar in pickle")
    return values[0].item()


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise FormatError("unsupported _codecs.encode call in pickle")
    return text.encode(encoding)


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    return _dims(dims, "torch.Size")


def _plain_collection(kind: type) -> Callable[..., Any]:
    def build(items: Any = ()) -> Any:
        if not isinstance(items, (list, tuple)):
            raise FormatError(f"bad {kind.__name__} in pickle")
        return kind(items)

    return build


def _as_string(*args: Any) -> str:
    return ":".join(str(a) for a in args if isinstance(a, (str, int)))


def _inert_class(qualified: str) -> type[InertObject]:
    return type(qualified.rsplit(".", 1)[-1], (InertObject,), {"qualified_name": qualified})


# Classes real checkpoints carry outside their tensors; kept as inert records.
_INERT_CLASSES = [
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
    "lightning_fabric.utilities.data.AttributeDict",
    "argparse.Namespace",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "pathlib.PurePosixPath",
    "pathlib.PureWindowsPath",
    "torch.nn.parameter.Parameter",
    "torch._tensor.Tensor",
    "torch.Tensor",
    "numpy.ndarray",
]

# Tensor kinds that are safe but that no Stable Diffusion file uses: refused as unsupported.
_UNSUPPORTED = {
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor",
    "torch._utils._rebuild_sparse_csr_tensor",
    "torch._utils._rebuild_nested_tensor",
    "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_wrapper_subclass",
    "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor",
    "torch._utils._rebuild_xla_tensor",
    "torch._utils._rebuild_mps_tensor",
}


def _build_allow_list() -> dict[str, Any]:
    allowed: dict[str, Any] = {
        "collections.OrderedDict": InertOrderedDict,
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
        "torch.Size": _torch_size,
        "torch.device": _as_string,
        "torch.torch_version.TorchVersion": _as_string,
        "torch.storage.UntypedStorage": StorageType("UntypedStorage", None),
        "torch.UntypedStorage": StorageType("UntypedStorage", None),
        "builtins.set": _plain_collection(set),
        "builtins.frozenset": _plain_collection(frozenset),
        "_codecs.encode": _codecs_encode,
    }
    for storage, dtype in BY_STORAGE.items():
        for module in ("torch", "torch.cuda"):
            allowed[f"{module}.{storage}"] = StorageType(storage, dtype)
    for torch_name, dtype in BY_TORCH_NAME.items():
        allowed[f"torch.{torch_name}"] = dtype
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{module}.scalar"] = _numpy_scalar
        allowed[f"{module}._reconstruct"] = NumpyArray
    allowed["numpy.dtype"] = NumpyDType
    for qualified in _INERT_CLASSES:
        allowed[qualified] = _inert_class(qualified)
    return allowed


ALLOWED_GLOBALS: dict[str, Any] = _build_allow_list()


# ---------------------------------------------------------------------------------------------
# The unpickler


class SafeUnpickler(pickle.Unpickler):
    """Interprets a pickle with globals limited to ALLOWED_GLOBALS. Never imports anything."""

    def __init__(
        self, file: Any, filename: str, persistent_load: Callable[[Any], Any] | None = None
    ) -> None:
        super().__init__(file, encoding="utf-8")
        self._filename = filename
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles use Python 2 names (__builtin__, commands); map them as the
        # standard unpickler does, so that the allow-list and the report see Python 3 names.
        qualified = pickle_scan.qualified_name(module, name)
        if qualified in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[qualified]
        if qualified in _UNSUPPORTED:
            raise FormatError(f"{self._filename} uses {qualified}, which is not supported")
        raise UnsafeFileError(f"{self._filename} is unsafe: it calls {printable(qualified)}")

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise FormatError(f"{self._filename}: unexpected persistent id in pickle")
        return self._persistent(pid)


def is_allowed(qualified: str) -> str:
    """The scan's verdict on a global: allowed, unsupported (safe tensor kinds that no model
    file uses) or unsafe."""
    if qualified in ALLOWED_GLOBALS:
        return pickle_scan.ALLOWED
    return pickle_scan.UNSUPPORTED if qualified in _UNSUPPORTED else pickle_scan.UNSAFE


def danger_scan(buffer: Any, start: int, end: int, filename: str) -> int | None:
    """Walk the pickle at `start` only to name what it would call (UnsafeFileError): where it
    ends, or None where the bytes are no (good) pickle. For streams a loader could run that we
    do not read ourselves; damage is the reader's to report."""
    try:
        return pickle_scan.scan(buffer, start, end, filename, is_allowed).end
    except UnsafeFileError:
        raise
    except FormatError:
        return None


def load(
    buffer: Any,
    start: int,
    end: int,
    filename: str,
    persistent_load: Callable[[Any], Any] | None = None,
) -> tuple[Any, int]:
    """Unpickle the pickle at `buffer[start:end]` (bytes or an mmap): the object, and the offset
    just past it, where a legacy file's next part begins.

    The opcodes are walked first (pickle_scan: the allow-list, budgets, no BUILD on a global),
    and only a pickle that passes reaches the standard library's interpreter. Every failure
    becomes a ModelToolkitError.
    """
    scanned = pickle_scan.scan(buffer, start, end, filename, is_allowed)
    stream = io.BytesIO(buffer[start : scanned.end])
    try:
        return SafeUnpickler(stream, filename, persistent_load).load(), scanned.end
    except (FormatError, UnsafeFileError):
        raise
    except RecursionError:
        raise FormatError(f"{filename}: pickle is nested too deeply") from None
    except MemoryError:
        raise FormatError(f"{filename}: pickle asks for more memory than it can hold") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        struct.error,
        OverflowError,
        UnicodeDecodeError,
    ) as exc:
        detail = safe_repr(exc) if not str(exc) else str(exc).splitlines()[0]
        raise FormatError(f"{filename}: broken pickle ({printable(detail, 200)})") from None


def storage_stub(pid: Any, filename: str) -> StorageStub:
    """Validate a torch persistent id: ('storage', type, key, location, numel[, view])."""
    if (
        not isinstance(pid, tuple)
        or len(pid) not in (5, 6)
        or pid[0] != "storage"
        or not isinstance(pid[1], StorageType)
        or not isinstance(pid[2], (str, int))
    ):
        raise FormatError(f"{filename}: unexpected persistent id {safe_repr(pid)}")
    numel = _count(pid[4], "storage size")
    view = None
    if len(pid) == 6 and pid[5] is not None:
        raw = pid[5]
        if not isinstance(raw, tuple) or len(raw) != 3 or not isinstance(raw[0], (str, int)):
            raise FormatError(f"{filename}: bad storage view in pickle")
        view = (str(raw[0]), _count(raw[1], "view offset"), _count(raw[2], "view size"))
    return StorageStub(str(pid[2]), pid[1].dtype, numel, view)
