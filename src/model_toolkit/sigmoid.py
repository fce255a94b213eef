"""torch's float32 sigmoid on the CPU, reproduced bit for bit in numpy.

The original toolkit's metric sums `sigmoid(x) - 0.5` over millions of weights and scales the CLIP
part by 10^6, so its digits depend on how torch rounds each sigmoid; numpy's own exp moves them.
torch computes `1 / (1 + exp(-x))` with SLEEF's `expf_u10` (fused multiply-adds) over blocks of
16 elements (two AVX2 vectors), and with the C library's `expf` (glibc's, in double precision)
on the last `n % 16` elements of a tensor. Both are rewritten here, operation for operation.

No library offers these exact roundings, hence the hand-written arithmetic. It is only ever run
on the 65536 float16 values (the metric rounds weights to float16 first), to build lookup tables.
"""

from __future__ import annotations

from functools import cache

import numpy as np

F32, F64 = np.float32, np.float64
VECTOR_BLOCK = 16  # torch handles 2 x 8 floats per step with AVX2; the rest one by one


def fma32(a: np.ndarray, b: np.ndarray | F32, c: np.ndarray | F32) -> np.ndarray:
    """float32 fused multiply-add, exact: a*b is exact in float64; the sum is rounded to float64
    "to odd" (TwoSum gives the error, a nonzero error forces the last bit to 1), which makes the
    final rounding to float32 correct, as a hardware FMA's single rounding is."""
    a64, b64, c64 = (np.asarray(v, F64) for v in (a, b, c))
    product = a64 * b64
    total = product + c64
    back = total - product
    error = (product - (total - back)) + (c64 - back)
    bits = total.view(np.int64).copy()
    fix = (error != 0) & ((bits & 1) == 0) & np.isfinite(total)
    step = np.where(np.signbit(error) == np.signbit(total), 1, -1)
    bits[fix] += step[fix]
    return bits.view(F64).astype(F32)


_R_LN2 = F32(1.442695040888963407359924681001892137426645954152985934135449406931)
_L2U = F32(0.693145751953125)
_L2L = F32(1.428606765330187045e-06)
_POLY = [
    F32(v)
    for v in (
        0.000198527617612853646278381,
        0.00139304355252534151077271,
        0.00833336077630519866943359,
        0.0416664853692054748535156,
        0.166666671633720397949219,
        0.5,
    )
]


def _pow2i(q: np.ndarray) -> np.ndarray:
    return ((q + 0x7F).astype(np.int32) << 23).view(F32)


def sleef_expf(d: np.ndarray) -> np.ndarray:
    """SLEEF's xexpf (1.0-ULP), as torch's Vectorized<float>::exp runs it with FMA."""
    d = np.asarray(d, F32)
    with np.errstate(all="ignore"):
        q = np.rint(d * _R_LN2)
        qi = np.clip(np.where(np.isfinite(q), q, 0), -(2**31), 2**31 - 1).astype(np.int32)
        qf = qi.astype(F32)
        s = fma32(qf, -_L2U, d)
        s = fma32(qf, -_L2L, s)
        u = np.full_like(d, _POLY[0])
        for coefficient in _POLY[1:]:
            u = fma32(u, s, coefficient)
        u = F32(1) + fma32(s * s, u, s)
        u = u * _pow2i(qi >> 1) * _pow2i(qi - (qi >> 1))
        u = np.where(d < F32(-104), F32(0), u)
        u = np.where(F32(100) < d, F32(np.inf), u)
    return u.astype(F32)


_EXP2F_TABLE = np.array(
    [
        0x3FF0000000000000,
        0x3FEFD9B0D3158574,
        0x3FEFB5586CF9890F,
        0x3FEF9301D0125B51,
        0x3FEF72B83C7D517B,
        0x3FEF54873168B9AA,
        0x3FEF387A6E756238,
        0x3FEF1E9DF51FDEE1,
        0x3FEF06FE0A31B715,
        0x3FEEF1A7373AA9CB,
        0x3FEEDEA64C123422,
        0x3FEECE086061892D,
        0x3FEEBFDAD5362A27,
        0x3FEEB42B569D4F82,
        0x3FEEAB07DD485429,
        0x3FEEA47EB03A5585,
        0x3FEEA09E667F3BCD,
        0x3FEE9F75E8EC5F74,
        0x3FEEA11473EB0187,
        0x3FEEA589994CCE13,
        0x3FEEACE5422AA0DB,
        0x3FEEB737B0CDC5E5,
        0x3FEEC49182A3F090,
        0x3FEED503B23E255D,
        0x3FEEE89F995AD3AD,
        0x3FEEFF76F2FB5E47,
        0x3FEF199BDD85529C,
        0x3FEF3720DCEF9069,
        0x3FEF5818DCFBA487,
        0x3FEF7C97337B9B5F,
        0x3FEFA4AFA2A490DA,
        0x3FEFD0765B6E4540,
    ],
    dtype=np.uint64,
)  # 2^(i/32) as float64 bits, minus i << 47 (glibc e_exp2f_data.c)
_INV_LN2_N = float.fromhex("0x1.71547652b82fep+0") * 32
_SHIFT = float.fromhex("0x1.8p+52")
_C0 = float.fromhex("0x1.c6af84b912394p-5") / 32 / 32 / 32
_C1 = float.fromhex("0x1.ebfce50fac4f3p-3") / 32 / 32
_C2 = float.fromhex("0x1.62e42ff0c52d6p-1") / 32
_EXPF_OVERFLOW = F32(float.fromhex("0x1.62e42ep6"))
_EXPF_UNDERFLOW = F32(float.fromhex("-0x1.9fe368p6"))


def glibc_expf(x: np.ndarray) -> np.ndarray:
    """glibc's expf (2.27+): a 32-entry table of 2^(i/32) and a cubic, in double precision."""
    x = np.asarray(x, F32)
    with np.errstate(all="ignore"):
        xd = x.astype(F64)
        z = _INV_LN2_N * xd
        kd = z + _SHIFT
        ki = kd.view(np.uint64)
        kd = kd - _SHIFT
        r = z - kd
        scale = (_EXP2F_TABLE[ki % np.uint64(32)] + (ki << np.uint64(47))).view(F64)
        y = (_C0 * r + _C1) * (r * r) + (_C2 * r + 1)
        out = (y * scale).astype(F32)
        out = np.where(x > _EXPF_OVERFLOW, F32(np.inf), out)
        out = np.where(x < _EXPF_UNDERFLOW, F32(0), out)
        out = np.where(np.isnan(x), x, out)
    return out


def sigmoid_vector(x: np.ndarray) -> np.ndarray:
    """torch.sigmoid's vectorised path: 1 / ((0 - x).exp() + 1)."""
    x = np.asarray(x, F32)
    with np.errstate(all="ignore"):
        return F32(1) / (sleef_expf(F32(0) - x) + F32(1))


def sigmoid_scalar(x: np.ndarray) -> np.ndarray:
    """torch.sigmoid's scalar path: 1 / (1 + std::exp(-x))."""
    x = np.asarray(x, F32)
    with np.errstate(all="ignore"):
        return F32(1) / (F32(1) + glibc_expf(-x))


def torch_sigmoid(x: np.ndarray) -> np.ndarray:
    """torch.sigmoid of a contiguous float32 tensor on one CPU thread, bit for bit."""
    x = np.asarray(x, F32).reshape(-1)
    split = len(x) - len(x) % VECTOR_BLOCK
    return np.concatenate([sigmoid_vector(x[:split]), sigmoid_scalar(x[split:])])


@cache
def half_tables() -> tuple[np.ndarray, np.ndarray]:
    """`sigmoid(x) - 0.5` in float32 for every float16 bit pattern: (vector path, scalar path)."""
    values = np.arange(65536, dtype=np.uint16).view(np.float16).astype(F32)
    with np.errstate(invalid="ignore"):
        return sigmoid_vector(values) - F32(0.5), sigmoid_scalar(values) - F32(0.5)
