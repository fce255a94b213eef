"""Chunked casting between float types that gives torch's bits, without torch.

Casting is done here, on numpy chunks, so that a write never needs torch and never holds a whole
tensor. The compiled loops of _kernels.c do the common float32 narrowings; numpy does the rest
(and all of it where the extension is not built), with the same results.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .dtypes import DType, ml_dtypes_module

try:  # the optional compiled loops (see _kernels.c); numpy below gives the same bits, slower
    from . import _kernels as kernels
except ImportError:  # pragma: no cover - built wherever a C compiler is found
    kernels = None


# torch's conversions differ from numpy's and ml_dtypes' only in two places, both handled below:
# - NaN bits. torch (2.13, CPU, vectorised kernels) carries a NaN through float32 with its payload
#   and the quiet bit set, then writes: float16 sign|0x7E00|payload, float8 sign|0x7F, and bfloat16
#   0xFFFF when the source is float32/float64 but 0x7FC0 otherwise. bfloat16 -> float32 is a plain
#   shift (no quiet bit). torch's scalar tail loop can differ from this for a few NaN bit patterns;
#   we follow the vectorised kernels, which handle all but the last few elements of a tensor.
# - float8_e4m3fn saturates: torch clamps overflow and infinities to +-448, ml_dtypes gives NaN.
_E4M3_MAX = np.float32(448.0)
_F32_QUIET = np.uint32(0x00400000)
_F32_SIGN = np.uint32(0x80000000)


def _has_nan(values: np.ndarray) -> bool:
    """One fast reduction instead of a mask: max() is NaN as soon as one element is."""
    return values.size > 0 and bool(np.isnan(values.max()))


_BLOCK = 1 << 16  # elements: the temporaries of one block stay in the L2 cache
_F16_SMALLEST_NORMAL = 113 << 23  # 2^-14, as float32 bits
_F16_OVERFLOW = 0x47800000  # 2^16: everything from here on (inf, NaN too) becomes inf


_local = threading.local()


def _scratch() -> tuple[np.ndarray, ...]:
    """Per-thread temporaries for one block, allocated once: fresh allocations of this size
    cost page faults on every call, more than the arithmetic itself."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = (
            *(np.empty(_BLOCK, np.uint32) for _ in range(4)),
            np.empty(_BLOCK, np.bool_),
        )
    return buffers


def _float32_to_float16(wide: np.ndarray) -> np.ndarray:
    """float32 -> float16, round to nearest even: the bits of `astype(np.float16)`, ~1.7x faster.

    numpy converts to half in a scalar loop (~5 ns an element), the costliest step of an fp16
    prune. This does it with integer ufuncs on cache-sized blocks, after F. Giesen's
    float_to_half_fast3_rtne: for normal results, add 0xFFF plus the lowest kept mantissa bit,
    rebias the exponent and shift; for subnormal results, let a float32 addition of 0.5 do the
    rounding. Magnitudes from 2^16 up (inf, NaN) are clamped to inf; the caller rewrites NaN.
    """
    bits = wide.view(np.uint32)
    out = np.empty(len(bits), np.uint16)
    magnitude, rounded, subnormal, sign, is_subnormal = _scratch()
    for start in range(0, len(bits), _BLOCK):
        block = bits[start : start + _BLOCK]
        size = len(block)
        mag, res, sub, sgn = magnitude[:size], rounded[:size], subnormal[:size], sign[:size]
        np.bitwise_and(block, 0x7FFFFFFF, out=mag)
        np.minimum(mag, _F16_OVERFLOW, out=mag)
        np.right_shift(mag, 13, out=res)
        np.bitwise_and(res, 1, out=res)
        np.add(res, 0xC8000FFF, out=res)  # exponent bias 127 -> 15 (mod 2^32), rounding bias
        np.add(res, mag, out=res)
        np.right_shift(res, 13, out=res)
        np.add(mag.view(np.float32), np.float32(0.5), out=sub.view(np.float32))
        np.subtract(sub, 0x3F000000, out=sub)  # the bits of 0.5
        np.less(mag, _F16_SMALLEST_NORMAL, out=is_subnormal[:size])
        np.copyto(res, sub, where=is_subnormal[:size])
        np.right_shift(block, 16, out=sgn)
        np.bitwise_and(sgn, 0x8000, out=sgn)
        np.bitwise_or(res, sgn, out=res)
        np.copyto(out[start : start + size], res, casting="unsafe")
    return out.view(np.float16)


def _narrow_with_payload() -> tuple[type, ...]:
    """The narrow types whose NaN payloads widen specially; the float8 ones only where
    ml_dtypes is (without it, no chunk can be float8: dtypes.py says so)."""
    ml_dtypes = ml_dtypes_module()
    if ml_dtypes is None:
        return (np.float16,)
    return (np.float16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)


def _finfo(dtype: np.dtype) -> Any:
    if dtype.itemsize == 1:  # float8: a chunk of it exists only where ml_dtypes does
        return ml_dtypes_module().finfo(dtype)  # type: ignore[union-attr]
    return np.finfo(dtype)


def _as_float32(chunk: np.ndarray) -> np.ndarray:
    """Widen (or, for float64, round) to float32 the way torch does, NaN payloads included."""
    if chunk.dtype == np.float32:
        return chunk
    with np.errstate(over="ignore", invalid="ignore"):
        wide = chunk.astype(np.float32)
    if chunk.dtype in _narrow_with_payload() and _has_nan(wide):
        # Re-derive each NaN from the source bits: payload moved to the top of the mantissa.
        nan = np.isnan(wide)
        src_bits = chunk.view(np.uint8 if chunk.itemsize == 1 else np.uint16)[nan].astype(np.uint32)
        info = _finfo(chunk.dtype)
        mant_bits = int(info.nmant)
        mant = src_bits & np.uint32((1 << mant_bits) - 1)
        sign = (src_bits >> np.uint32(chunk.itemsize * 8 - 1)) << np.uint32(31)
        bits = sign | np.uint32(0x7F800000) | (mant << np.uint32(23 - mant_bits)) | _F32_QUIET
        wide.view(np.uint32)[nan] = bits
    return wide


_COMPILED = {
    "F16": "f32_to_f16",
    "BF16": "f32_to_bf16",
    "F8_E4M3": "f32_to_e4m3fn",
    "F8_E5M2": "f32_to_e5m2",
}


def _compiled_narrowing(target: DType) -> Callable[[np.ndarray, np.ndarray], None] | None:
    """The compiled float32 -> `target` loop, if the extension is built and has one."""
    name = _COMPILED.get(target.name)
    return getattr(kernels, name) if kernels is not None and name else None


def cast(chunk: np.ndarray, target: DType) -> np.ndarray:
    """Cast a 1-D chunk of a floating type to `target`, as torch's `.to(dtype)` does on the CPU.

    torch narrows every type through float32 (c10's Half, BFloat16 and Float8 types are built from
    a float), so float64 is first rounded to float32 and then to the target: double rounding,
    which we reproduce on purpose. Rounding is to nearest even, overflow gives inf (float16,
    bfloat16, float8_e5m2) or saturates (float8_e4m3fn), subnormals are kept.
    """
    if chunk.dtype == target.numpy:
        return chunk
    source_is_wide = chunk.dtype in (np.float32, np.float64)
    wide = _as_float32(chunk)
    if target.numpy == np.float32:
        return wide
    if target.numpy == np.float64:
        with np.errstate(invalid="ignore"):  # NaN -> NaN is not an error
            return wide.astype(np.float64)
    # The compiled loops write torch's NaN bits themselves; bfloat16 only knows those of a wide
    # source (a narrow NaN becomes 0x7FC0, handled below).
    narrowing = _compiled_narrowing(target) if source_is_wide or target.name != "BF16" else None
    if narrowing is not None:
        out = np.empty(len(wide), target.numpy)
        narrowing(np.ascontiguousarray(wide), out.view(np.uint8))
        return out
    if target.name == "F8_E4M3":
        wide = np.clip(wide, -_E4M3_MAX, _E4M3_MAX)
    if target.name == "F16":
        out = _float32_to_float16(wide)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            out = wide.astype(target.numpy)
    if _has_nan(wide):
        nan = np.isnan(wide)
        bits = wide.view(np.uint32)[nan]
        sign = bits & _F32_SIGN
        if target.name == "F16":
            fixed = (
                (sign >> np.uint32(16))
                | np.uint32(0x7E00)
                | ((bits & np.uint32(0x7FFFFF)) >> np.uint32(13))
            )
            out.view(np.uint16)[nan] = fixed.astype(np.uint16)
        elif target.name == "BF16":
            out.view(np.uint16)[nan] = np.uint16(0xFFFF if source_is_wide else 0x7FC0)
        elif target.name in ("F8_E4M3", "F8_E5M2"):
            out.view(np.uint8)[nan] = ((sign >> np.uint32(24)) | np.uint32(0x7F)).astype(np.uint8)
    return out
