"""The dtype table shared by every format (casting is in casting.py).

One row per element type: its safetensors name, its torch names (dtype and legacy storage class)
and its numpy dtype (ml_dtypes supplies bfloat16 and the float8 types numpy lacks). numpy is only
imported when a dtype's `numpy` is asked for: identifying a file reads no values and starts
faster without it (numpy and ml_dtypes take ~0.2 s to import).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    import numpy as np


@cache
def ml_dtypes_module() -> ModuleType | None:
    """ml_dtypes (bfloat16 and the float8 types), or None where it does not import: a webui
    whose numpy no ml_dtypes fits. Asked once; every caller sees the same answer."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return ml_dtypes


@dataclass(frozen=True)
class DType:
    """One element type. `name` is the safetensors spelling, used everywhere in the project."""

    name: str
    itemsize: int
    torch_name: str  # attribute of the torch module: torch.float16 -> "float16"; numpy (or
    # ml_dtypes) spells every one of these types the same way
    storage: str | None  # legacy typed storage class (torch.HalfStorage); None: untyped only
    is_float: bool
    # As a precision: cast only floats wider than this, keep the others (`auto`). Not part of
    # the type's identity: F16 narrowing-only is F16.
    narrow_only: bool = field(default=False, compare=False)
    # A block-quantized type (GGUF's Q8_0, Q4_K, ...): (elements, bytes) of one block, and its
    # GGUF type number. Its values are float32 once decoded, so `itemsize` and `numpy` are
    # float32's; what it takes on disk is `nbytes_for`.
    block: tuple[int, int] | None = field(default=None, compare=False)
    gguf_type: int | None = field(default=None, compare=False)
    # As a precision: fp8 with a float32 scale per Linear weight (ComfyUI's fp8_scaled).
    scaled: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        return self.name

    @property
    def quantized(self) -> bool:
        return self.block is not None

    def nbytes_for(self, numel: int) -> int:
        """The bytes `numel` values take in this type (whole blocks for a quantized type)."""
        if self.block is None:
            return numel * self.itemsize
        elements, nbytes = self.block
        return -(-numel // elements) * nbytes

    @cached_property
    def numpy(self) -> np.dtype:
        import numpy as np

        if self.torch_name.startswith(("bfloat", "float8")):
            ml_dtypes = ml_dtypes_module()
            if ml_dtypes is None:  # a webui whose numpy no ml_dtypes fits: the rest still works
                raise UsageError(
                    f"{self.name} tensors need the ml_dtypes package, which does not import "
                    "here; install one that fits this numpy (pip install 'ml_dtypes>=0.4')"
                )
            return np.dtype(getattr(ml_dtypes, self.torch_name))
        return np.dtype(self.torch_name)


DTYPES: dict[str, DType] = {
    row.name: row
    for row in (
        DType("F64", 8, "float64", "DoubleStorage", True),
        DType("F32", 4, "float32", "FloatStorage", True),
        DType("F16", 2, "float16", "HalfStorage", True),
        DType("BF16", 2, "bfloat16", "BFloat16Storage", True),
        DType("F8_E4M3", 1, "float8_e4m3fn", None, True),
        DType("F8_E5M2", 1, "float8_e5m2", None, True),
        DType("F8_E4M3FNUZ", 1, "float8_e4m3fnuz", None, True),
        DType("F8_E5M2FNUZ", 1, "float8_e5m2fnuz", None, True),
        DType("C64", 8, "complex64", "ComplexFloatStorage", False),
        DType("I64", 8, "int64", "LongStorage", False),
        DType("I32", 4, "int32", "IntStorage", False),
        DType("I16", 2, "int16", "ShortStorage", False),
        DType("I8", 1, "int8", "CharStorage", False),
        DType("U64", 8, "uint64", None, False),
        DType("U32", 4, "uint32", None, False),
        DType("U16", 2, "uint16", None, False),
        DType("U8", 1, "uint8", "ByteStorage", False),
        DType("BOOL", 1, "bool", "BoolStorage", False),
    )
}


def _quantized(name: str, gguf_type: int, elements: int, nbytes: int) -> DType:
    return DType(name, 4, "float32", None, True, block=(elements, nbytes), gguf_type=gguf_type)


# GGUF's block-quantized types (ggml.h; block sizes as gguf-py's GGML_QUANT_SIZES). Read and
# decoded by the gguf package (quantized.py); only GGUF files hold them.
QUANTIZED: dict[str, DType] = {
    row.name: row
    for row in (
        _quantized("Q4_0", 2, 32, 18),
        _quantized("Q4_1", 3, 32, 20),
        _quantized("Q5_0", 6, 32, 22),
        _quantized("Q5_1", 7, 32, 24),
        _quantized("Q8_0", 8, 32, 34),
        _quantized("Q8_1", 9, 32, 40),
        _quantized("Q2_K", 10, 256, 84),
        _quantized("Q3_K", 11, 256, 110),
        _quantized("Q4_K", 12, 256, 144),
        _quantized("Q5_K", 13, 256, 176),
        _quantized("Q6_K", 14, 256, 210),
        _quantized("Q8_K", 15, 256, 292),
        _quantized("IQ2_XXS", 16, 256, 66),
        _quantized("IQ2_XS", 17, 256, 74),
        _quantized("IQ3_XXS", 18, 256, 98),
        _quantized("IQ1_S", 19, 256, 50),
        _quantized("IQ4_NL", 20, 32, 18),
        _quantized("IQ3_S", 21, 256, 110),
        _quantized("IQ2_S", 22, 256, 82),
        _quantized("IQ4_XS", 23, 256, 136),
        _quantized("IQ1_M", 29, 256, 56),
        _quantized("TQ1_0", 34, 256, 54),
        _quantized("TQ2_0", 35, 256, 66),
        _quantized("MXFP4", 39, 32, 17),
        _quantized("NVFP4", 40, 64, 36),
        _quantized("Q1_0", 41, 128, 18),
    )
}

BY_TORCH_NAME: dict[str, DType] = {d.torch_name: d for d in DTYPES.values()}
BY_STORAGE: dict[str, DType] = {d.storage: d for d in DTYPES.values() if d.storage}
# torch's complex128 has a storage class but safetensors has no name for it: readable, not writable.
BY_STORAGE["ComplexDoubleStorage"] = DType("C128", 16, "complex128", None, False)
BY_TORCH_NAME["complex128"] = BY_STORAGE["ComplexDoubleStorage"]
# Older spellings torch accepts for the same dtypes.
for alias, canonical in {
    "half": "float16",
    "float": "float32",
    "double": "float64",
    "long": "int64",
    "int": "int32",
    "short": "int16",
}.items():
    BY_TORCH_NAME[alias] = BY_TORCH_NAME[canonical]

# The precisions a user can ask for, in the words of the CLI. `auto` (prune's default) keeps a
# float type narrower than 32 bits and narrows the wider ones to the model's own 16-bit type:
# a bf16 Flux stays bf16, an fp32 SD-v1 becomes fp16, an fp8 file keeps its fp8 weights.
PRECISIONS: dict[str, str | None] = {
    "auto": "F16",
    "keep": None,
    "fp32": "F32",
    "fp16": "F16",
    "bf16": "BF16",
    "fp8_e4m3fn": "F8_E4M3",
    "fp8_e5m2": "F8_E5M2",
    # fp8 e4m3fn with a scale per Linear weight, as ComfyUI's fp8_scaled files
    "fp8_e4m3fn_scaled": "F8_E4M3",
    # GGUF only (.gguf outputs): what the gguf package quantizes in numpy
    "Q8_0": "Q8_0",
    "Q5_1": "Q5_1",
    "Q5_0": "Q5_0",
    "Q4_1": "Q4_1",
    "Q4_0": "Q4_0",
}


def precision_dtype(precision: str) -> DType | None:
    """The dtype for a CLI precision word; None for `keep`; AUTO for `auto` (resolved per
    model by auto_precision)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return AUTO
    name = PRECISIONS[precision]
    if precision.endswith("_scaled"):
        return replace(DTYPES["F8_E4M3"], scaled=True)
    return (DTYPES.get(name) or QUANTIZED[name]) if name else None


def float_bytes(tensors: Iterable[Any]) -> dict[DType, int]:
    """Bytes per float dtype among tensors (anything with `dtype` and `nbytes`)."""
    sizes: dict[DType, int] = {}
    for tensor in tensors:
        if tensor.dtype.is_float:
            sizes[tensor.dtype] = sizes.get(tensor.dtype, 0) + tensor.nbytes
    return sizes


def dominant_float(tensors: Iterable[Any]) -> DType | None:
    """The float type holding the most bytes among tensors (None: no floats)."""
    sizes = float_bytes(tensors)
    return max(sizes, key=sizes.__getitem__) if sizes else None


def auto_precision(dtypes: dict[DType, int], preferred: str = "F16") -> DType:
    """`auto` for a model whose float tensors hold these bytes per dtype: its dominant 16-bit
    float type (else the architecture's `preferred`), narrowing only."""
    halves = {d: n for d, n in dtypes.items() if d.is_float and d.itemsize == 2}
    chosen = max(halves, key=halves.__getitem__) if halves else DTYPES[preferred]
    return replace(chosen, narrow_only=True)


def target_dtype(source: DType, precision: DType | None) -> DType:
    """What a tensor becomes under a precision: floats are cast, everything else is kept;
    under a narrowing-only precision (`auto`), floats no wider than it are kept too."""
    if precision is None or not source.is_float:
        return source
    if precision.narrow_only and (
        source.itemsize <= precision.itemsize or source.nbytes_for(64) <= precision.nbytes_for(64)
    ):
        return source  # (a block-quantized type is narrower than any 16-bit float)
    return precision


AUTO = replace(DTYPES["F16"], narrow_only=True)  # `auto` before a model resolves it
