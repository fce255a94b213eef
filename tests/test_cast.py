"""Casting must give the bits torch 2.13's `.to(dtype)` gives, on adversarial values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_toolkit import casting
from model_toolkit.casting import cast
from model_toolkit.dtypes import DTYPES

FLOATS = ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"]
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
SIGNED = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}

# torch's vectorised kernels handle whole blocks; its scalar tail loop writes a few NaN patterns
# differently. Lengths that are multiples of 64 keep every element inside the vectorised part.
N = 64 * 20_000


@pytest.fixture(autouse=True, params=["compiled", "compiled-portable", "numpy"])
def implementation(request, monkeypatch):
    """Every test runs on each way of casting: the compiled loops (float16 by the CPU's F16C
    instructions where it has them, and by the portable loop), and plain numpy."""
    if request.param == "numpy":
        monkeypatch.setattr(casting, "kernels", None)
    elif casting.kernels is None:
        pytest.skip("the compiled kernels are not built here (no C compiler at install)")
    elif request.param == "compiled-portable":
        casting.kernels.use_portable_half()
        request.addfinalizer(casting.kernels.use_best_half)
    return request.param


def adversarial(name: str, rng: np.random.Generator) -> np.ndarray:
    """Random bit patterns of the type (every NaN, inf, subnormal, huge value) plus edge cases."""
    dtype = DTYPES[name]
    width = dtype.itemsize * 8
    raw = rng.integers(0, 2**63, N, dtype=np.uint64)
    bits = (raw >> np.uint64(64 - width) if width < 64 else raw | (raw << np.uint64(1))).astype(
        UINT[dtype.itemsize]
    )
    values = bits.view(dtype.numpy).copy()
    if dtype.itemsize >= 2:
        # Values around every rounding boundary of the narrower types.
        edges = np.array(
            [
                0.0,
                -0.0,
                448.0,
                464.0,
                480.0,
                57344.0,
                61440.0,
                65504.0,
                65519.99,
                65520.0,
                2.0**-24,
                2.0**-25,
                2.0**-26,
                1.5 * 2.0**-25,
                2.0**-133,
                2.0**-134,
                3.4e38,
                np.inf,
                -np.inf,
                1 + 2.0**-8 + 2.0**-30,
                1 + 2.0**-11,
                1 + 3 * 2.0**-11,
            ],
            dtype=np.float64,
        )
        edges = np.concatenate([edges, -edges, rng.standard_normal(64) * 1e-3])
        with np.errstate(over="ignore"):
            values[: len(edges)] = edges.astype(dtype.numpy)
    return values


def torch_cast(values: np.ndarray, source: str, target: str) -> np.ndarray:
    src, tgt = DTYPES[source], DTYPES[target]
    as_ints = torch.from_numpy(values.view(SIGNED[src.itemsize]).copy())
    result = as_ints.view(getattr(torch, src.torch_name)).to(getattr(torch, tgt.torch_name))
    return (
        result.view(getattr(torch, SIGNED[tgt.itemsize].__name__)).numpy().view(UINT[tgt.itemsize])
    )


@pytest.mark.parametrize(("source", "target"), [(s, t) for s in FLOATS for t in FLOATS if s != t])
def test_cast_matches_torch_bit_for_bit(source: str, target: str) -> None:
    values = adversarial(source, np.random.default_rng(hash((source, target)) % 2**32))
    ours = cast(values, DTYPES[target]).view(UINT[DTYPES[target].itemsize])
    theirs = torch_cast(values, source, target)
    bad = np.nonzero(ours != theirs)[0]
    assert bad.size == 0, (
        f"{bad.size} differ, e.g. input {values.view(UINT[DTYPES[source].itemsize])[bad[:4]]}: "
        f"ours {ours[bad[:4]]}, torch {theirs[bad[:4]]}"
    )


@pytest.mark.parametrize("length", [1, 3, 7, 15, 17, 31, 33, 63])
@pytest.mark.parametrize("target", ["F16", "BF16", "F8_E4M3", "F8_E5M2"])
def test_short_tails_match_torch_on_numbers(length: int, target: str) -> None:
    """Outside the vectorised blocks every non-NaN value still matches torch exactly."""
    values = adversarial("F32", np.random.default_rng(length))[:length]
    ours = cast(values, DTYPES[target])
    theirs = torch_cast(values, "F32", target)
    numbers = ~np.isnan(values)
    assert np.array_equal(ours.view(UINT[DTYPES[target].itemsize])[numbers], theirs[numbers])
    assert np.isnan(ours[~numbers].astype(np.float32)).all()


def test_float64_is_rounded_twice_like_torch() -> None:
    """1 + 2^-8 + 2^-30 rounds to bfloat16 1.0 via float32, to 1.0078125 directly."""
    value = np.array([1 + 2.0**-8 + 2.0**-30], dtype=np.float64)
    assert cast(value, DTYPES["BF16"]).astype(np.float32)[0] == 1.0
    assert torch_cast(value, "F64", "BF16")[0] == 0x3F80


def test_float8_e4m3_saturates() -> None:
    values = np.array([500.0, -1e30, np.inf, -np.inf], dtype=np.float32)
    assert cast(values, DTYPES["F8_E4M3"]).astype(np.float32).tolist() == [448, -448, 448, -448]


def test_fast_float16_rounding_equals_numpy_across_the_whole_range():
    """The integer-ufunc float16 conversion against numpy's, on a sweep of all float32 bits."""
    from model_toolkit.casting import _float32_to_float16

    bits = np.arange(0, 2**32, 997, dtype=np.uint64).astype(np.uint32)
    bits = np.concatenate(
        [
            bits,
            np.arange(0x33000000 - 4096, 0x33000000 + 4096, dtype=np.uint32),
            np.arange(0x387FF000, 0x38801000, dtype=np.uint32),
            np.arange(0x477FE000, 0x47801000, dtype=np.uint32),
        ]
    )
    values = bits.view(np.float32)
    numbers = ~np.isnan(values)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    ours = _float32_to_float16(values).view(np.uint16)
    assert np.array_equal(ours[numbers], expected[numbers])
