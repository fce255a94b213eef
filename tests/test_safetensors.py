"""The safetensors header parser and writer, against the real safetensors library."""

from __future__ import annotations

import contextlib
import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import model_toolkit as mtk
from conftest import ALL_DTYPES, as_bytes, assert_same_tensors, sample_tensor
from model_toolkit.formats.safetensors import parse_header


def test_reads_every_dtype_written_by_the_library(tmp_path):
    tensors = {f"t{i}": sample_tensor(d, (4, 3), i) for i, d in enumerate(ALL_DTYPES)}
    tensors["scalar"] = torch.tensor(2.0)
    tensors["empty"] = torch.zeros((0, 3))
    path = tmp_path / "all.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "note": "é"})
    with mtk.open(path) as model:
        assert model.format == "safetensors"
        assert model.metadata == {"format": "pt", "note": "é"}
        assert set(model.tensors) == set(tensors)
        for name, tensor in tensors.items():
            ref = model.tensors[name]
            assert ref.shape == tuple(tensor.shape)
            assert ref.read().tobytes() == as_bytes(tensor), name
            start, end = ref.byte_range
            assert end - start == ref.nbytes


def test_opening_maps_nothing(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(256, 256)}, path)
    with mtk.open(path) as model:
        assert model._data._mmap is None


def test_writer_output_loads_in_safetensors_with_same_bits(tmp_path):
    tensors = {f"t{i}": sample_tensor(d, (5, 7), i) for i, d in enumerate(ALL_DTYPES)}
    source = tmp_path / "in.safetensors"
    save_file(tensors, source, metadata={"ss_network_dim": "32"})
    out = tmp_path / "out.safetensors"
    with mtk.open(source) as model:
        mtk.write_plan(mtk.convert(model), out)
    assert_same_tensors(load_file(out), tensors)
    with mtk.open(out) as reread:
        assert reread.metadata == {"ss_network_dim": "32"}
    header_length = struct.unpack("<Q", out.read_bytes()[:8])[0]
    assert (8 + header_length) % 8 == 0  # data section aligned, as the library pads it


def header_file(tmp_path, header: object, data: bytes = b"", raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


BAD_HEADERS = {
    "unknown dtype": (
        {"a": {"dtype": "F7", "shape": [1], "data_offsets": [0, 4]}},
        4,
        "unknown dtype 'F7'",
    ),
    "size mismatch": (
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
        4,
        "needs 8 bytes, data_offsets give 4",
    ),
    "overlap": (
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        },
        8,
        "overlaps",
    ),
    "gap": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "leaves a gap"),
    "past end": (
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
        8,
        "file truncated",
    ),
    "trailing data": (
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
        8,
        "tensors cover 4",
    ),
    "negative shape": (
        {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
        4,
        "non-negative",
    ),
    "reversed offsets": (
        {"a": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}},
        4,
        "begin <= end",
    ),
    "metadata not str": ({"__metadata__": {"a": 1}}, 0, "strings to strings"),
    "not an object": ([1, 2], 0, "not a JSON object"),
    "missing field": ({"a": {"dtype": "F32", "shape": [1]}}, 4, "must have dtype"),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_bad_headers_are_one_clear_error(tmp_path, case):
    header, size, message = BAD_HEADERS[case]
    path = header_file(tmp_path, header, b"\0" * size)
    with pytest.raises(mtk.FormatError, match=message) as info:
        mtk.open(path)
    assert str(info.value).startswith("bad.safetensors: ")
    with pytest.raises(Exception):  # noqa: B017 - the library agrees the file is bad
        load_file(path)


def test_lying_header_length(tmp_path):
    path = tmp_path / "lie.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(
        mtk.FormatError, match="header length 1000000000000 is larger than the file"
    ):
        mtk.open(path)


def test_invalid_json_and_duplicate_keys(tmp_path):
    with pytest.raises(mtk.FormatError, match="not valid JSON"):
        mtk.open(header_file(tmp_path, None, raw=b"{nope"))
    raw = (
        b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    )
    with pytest.raises(mtk.FormatError, match="duplicate key 'a'"):
        mtk.open(header_file(tmp_path, None, b"\0", raw=raw))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=64))
def test_parser_never_fails_any_other_way(raw, data_size):
    """Any bytes as a header: a valid result or a FormatError, nothing else."""
    with contextlib.suppress(mtk.FormatError):
        parse_header(raw, data_size)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 20) | st.text(max_size=4),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["dtype", "shape", "data_offsets", "x"]), children, max_size=4
        )
    ),
    max_leaves=12,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(st.text(max_size=3), json_values, max_size=4),
    st.integers(min_value=0, max_value=64),
)
def test_structured_garbage_headers(header, data_size):
    """JSON that looks almost right: still only a valid result or a FormatError."""
    try:
        entries, _ = parse_header(json.dumps(header).encode(), data_size)
    except mtk.FormatError:
        return
    covered = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in entries.values())
    assert covered == data_size


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL"]),
            st.lists(st.integers(0, 4), max_size=3),
        ),
        max_size=6,
    )
)
def test_headers_we_write_parse_back(specs):
    """Round trip: the parser accepts every header the writer produces."""
    from model_toolkit.dtypes import DTYPES
    from model_toolkit.formats.safetensors import header_bytes

    plan = mtk.Plan(
        [
            mtk.PlanEntry(
                f"t{i}",
                mtk.TensorRef.from_array(
                    f"t{i}", np.zeros(shape, DTYPES[dtype].numpy), DTYPES[dtype]
                ),
                DTYPES[dtype],
            )
            for i, (dtype, shape) in enumerate(specs)
        ],
        {"k": "v"},
    )
    raw = header_bytes(plan)
    entries, metadata = parse_header(raw[8:], plan.nbytes)
    assert list(entries) == [f"t{i}" for i in range(len(specs))]
    assert metadata == {"k": "v"}
