"""GGUF (city96's ComfyUI-GGUF files): read header only, identified by the registry, converted
both ways tensor by tensor, with the gguf package as the oracle: files written by its
GGUFWriter read back bit-exact, ours read by its GGUFReader, values equal to its own
`dequantize` and `quantize`, bit for bit."""

from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import load_file, save_file

import model_toolkit as mtk
from conftest import run_mtk
from model_toolkit.architectures import keylists
from model_toolkit.formats.gguf_writer import for_gguf
from model_toolkit.operations import convert

# What the package dequantizes in numpy (the K-quants and IQ types included).
DECODED = [
    Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
    Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ1_S, Q.IQ1_M, Q.IQ4_NL, Q.IQ4_XS,
    Q.TQ1_0, Q.TQ2_0, Q.MXFP4,
]  # fmt: skip
# What it quantizes in numpy: what `mtk convert ... --precision` offers for .gguf.
ENCODED = ["Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]


def gguf_file(path, tensors, arch="flux", fields=None):
    """A GGUF written by the package: {name: (array, qtype)}; a uint8 array is raw blocks."""
    writer = gguf.GGUFWriter(path, arch)
    for key, value in (fields or {}).items():
        writer.add_array(key, value) if isinstance(value, list) else writer.add_string(key, value)
    for name, (array, qtype) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).view(np.uint8)


def random_blocks(qtype, rows: int, row: int, seed: int = 0) -> np.ndarray:
    """Stored bytes for [rows, row] values: random, except fp16 scales made finite so that
    comparisons are of numbers (NaN payloads are compared as bits anyway)."""
    shape = gguf.quants.quant_shape_to_byte_shape((rows, row), qtype)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("qtype", DECODED, ids=lambda q: q.name)
def test_every_type_the_package_decodes_converts_bit_equal(tmp_path, qtype):
    raw = random_blocks(qtype, 3, 512)
    path = gguf_file(tmp_path / "q.gguf", {"blocks.0.weight": (raw, qtype)})
    with mtk.open(path) as model:
        ref = model.tensors["blocks.0.weight"]
        assert ref.shape == (3, 512) and ref.dtype.name == qtype.name
        assert ref.nbytes == raw.nbytes
        plan = convert(model, mtk.precision_dtype("fp32"))
        out = mtk.write_plan(plan, tmp_path / "q.safetensors")
    ours = load_file(str(out))["blocks.0.weight"]
    expected = gguf.quants.dequantize(raw, qtype).astype(np.float32)
    assert np.array_equal(bits(ours), bits(expected))


def test_rows_are_decoded_a_few_at_a_time_with_the_same_values(tmp_path):
    raw = random_blocks(Q.Q4_K, 64, 1024, seed=1)
    path = gguf_file(tmp_path / "q.gguf", {"w": (raw, Q.Q4_K)})
    with mtk.open(path) as model:
        chunks = [job() for _, job in model.tensors["w"].chunks(max_bytes=3 * 1024 * 4)]
    assert len(chunks) > 10  # three rows a chunk
    expected = gguf.quants.dequantize(raw, Q.Q4_K).reshape(-1)
    assert np.array_equal(bits(np.concatenate(chunks)), bits(expected))


def test_plain_tensors_and_metadata_read_as_the_package_wrote_them(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {
        "a.weight": (rng.standard_normal((4, 6)).astype(np.float32), Q.F32),
        "b.weight": (rng.standard_normal((2, 3, 8)).astype(np.float16), Q.F16),
        "c.bias": (np.arange(5, dtype=np.int32), Q.I32),
    }
    path = gguf_file(tmp_path / "p.gguf", tensors, fields={"general.name": "demo"})
    with mtk.open(path) as model:
        assert model.format == "gguf"
        assert model.metadata["general.architecture"] == "flux"
        assert model.metadata["general.name"] == "demo"
        for name, (array, _) in tensors.items():
            ref = model.tensors[name]
            assert ref.shape == array.shape
            assert np.array_equal(bits(mtk.read_all(ref)), bits(array))


def test_a_reshaped_tensor_gets_its_original_shape(tmp_path):
    """ComfyUI-GGUF stores SD convolutions as rows of 256 with `comfy.gguf.orig_shape`."""
    values = np.random.default_rng(3).standard_normal((45, 256)).astype(np.float32)
    raw = gguf.quants.quantize(values, Q.Q8_0)
    path = gguf_file(
        tmp_path / "sd.gguf",
        {"input_blocks.0.0.weight": (raw, Q.Q8_0)},
        arch="sd1",
        fields={"comfy.gguf.orig_shape.input_blocks.0.0.weight": [320, 4, 3, 3]},
    )
    with mtk.open(path) as model:
        ref = model.tensors["input_blocks.0.0.weight"]
        assert ref.shape == (320, 4, 3, 3)
        assert "comfy.gguf.orig_shape.input_blocks.0.0.weight" not in model.metadata
        expected = gguf.quants.dequantize(raw, Q.Q8_0).reshape(320, 4, 3, 3)
        assert np.array_equal(mtk.read_all(ref), expected)
        copy = mtk.write_plan(convert(model, None), tmp_path / "copy.gguf")
    reader = gguf.GGUFReader(copy)  # copied as stored: rows of 256, the shape beside them
    [tensor] = reader.tensors
    assert tensor.shape.tolist() == [256, 45] and np.array_equal(bits(tensor.data), bits(raw))
    field = reader.get_field("comfy.gguf.orig_shape.input_blocks.0.0.weight")
    assert [int(field.parts[i][0]) for i in field.data] == [320, 4, 3, 3]


def wan_like(tmp_path, dtype=np.float32):
    """A few Wan-named tensors of real kinds: a 2-D weight, a 1-D bias, a `.modulation`
    (F32 by ComfyUI-GGUF's rule), a 5-D patch embedding, a small one."""
    rng = np.random.default_rng(4)
    tensors = {
        "blocks.0.self_attn.q.weight": rng.standard_normal((64, 512)),
        "blocks.0.self_attn.q.bias": rng.standard_normal(64),
        "blocks.0.modulation": rng.standard_normal((1, 6, 512)),
        "patch_embedding.weight": rng.standard_normal((64, 16, 1, 2, 2)),
        "head.head.weight": rng.standard_normal((16, 8)),
    }
    tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    path = tmp_path / "wan.safetensors"
    save_file(tensors, str(path))
    return path, tensors


@pytest.mark.parametrize("precision", ENCODED)
def test_quantized_output_is_the_packages_own_quantize_and_its_reader_reads_it(tmp_path, precision):
    source, tensors = wan_like(tmp_path)
    with mtk.open(source) as model:
        plan = convert(model, mtk.precision_dtype(precision))
        plan.metadata["general.architecture"] = "wan"  # names alone are not a Wan model
        out = mtk.write_plan(plan, tmp_path / "wan.gguf")
    reader = gguf.GGUFReader(out)
    found = {t.name: t for t in reader.tensors}
    assert set(found) == set(tensors)
    q = found["blocks.0.self_attn.q.weight"]
    assert q.tensor_type.name == precision
    expected = gguf.quants.quantize(tensors["blocks.0.self_attn.q.weight"], Q[precision])
    assert np.array_equal(bits(q.data), bits(expected))
    # ComfyUI-GGUF's rules: 1-D, small and `.modulation` tensors in F32, 5-D stored 2-D
    for name in ("blocks.0.self_attn.q.bias", "blocks.0.modulation", "head.head.weight"):
        assert found[name].tensor_type == Q.F32
        assert np.array_equal(found[name].data.reshape(-1), tensors[name].reshape(-1))
    patch = found["patch_embedding.weight"]
    assert list(reversed(patch.shape.tolist())) == [64, 64]
    field = reader.get_field("comfy.gguf.orig_shape.patch_embedding.weight")
    assert [int(field.parts[i][0]) for i in field.data] == [64, 16, 1, 2, 2]
    arch = reader.get_field("general.architecture")
    assert bytes(arch.parts[arch.data[0]]).decode() == "wan"
    # ... and we read it back in its real shapes
    with mtk.open(out) as model:
        assert model.tensors["patch_embedding.weight"].shape == (64, 16, 1, 2, 2)


def test_bf16_and_fp16_outputs_round_as_the_package_does(tmp_path):
    source, tensors = wan_like(tmp_path)
    for precision, qtype in (("bf16", Q.BF16), ("fp16", Q.F16)):
        with mtk.open(source) as model:
            plan = convert(model, mtk.precision_dtype(precision))
            plan.metadata["general.architecture"] = "wan"
            out = mtk.write_plan(plan, tmp_path / f"wan-{precision}.gguf")
        found = {t.name: t for t in gguf.GGUFReader(out).tensors}
        weight = found["blocks.0.self_attn.q.weight"]
        assert weight.tensor_type == qtype
        expected = gguf.quants.quantize(tensors["blocks.0.self_attn.q.weight"], qtype)
        assert np.array_equal(bits(weight.data), bits(expected))


def test_a_checkpoint_becomes_its_diffusion_model_alone(tmp_path):
    """SD-v1's UNET under `model.diffusion_model.`, the rest left out with a warning."""
    unet = keylists.load("UNET-v1-SD")
    small = {
        "model.diffusion_model.input_blocks.0.0.weight": np.ones((320, 4, 3, 3), np.float16),
        "first_stage_model.decoder.conv_in.bias": np.ones(512, np.float16),
    }
    # Planned, not written: the UNET's other tensors are zeros, and only names and shapes
    # are looked at here.
    from model_toolkit.model import TensorRef
    from model_toolkit.plan import Plan, PlanEntry

    entries = []
    for name, shape in [("model.diffusion_model." + n, s) for n, s in unet] + [
        ("first_stage_model.decoder.conv_in.bias", (512,))
    ]:
        if name in small:
            ref = TensorRef.from_array(name, small[name], mtk.DTYPES["F16"])
        else:
            ref = TensorRef.zeros(name, shape, mtk.DTYPES["F16"])
        q8 = mtk.precision_dtype("Q8_0")
        entries.append(PlanEntry(name, ref, q8 if len(shape) > 1 else ref.dtype))
    ready = for_gguf(Plan(entries))
    assert ready.metadata["general.architecture"] == "sd1"
    assert all(not e.name.startswith("model.") for e in ready.entries)
    assert len(ready.entries) == len(unet)
    assert any("diffusion model alone: 1 other tensors" in w for w in ready.warnings)
    conv = next(e for e in ready.entries if e.name == "input_blocks.0.0.weight")
    assert conv.shape == (45, 256) and conv.dtype.name == "Q8_0"
    assert ready.metadata["comfy.gguf.orig_shape.input_blocks.0.0.weight"] == [320, 4, 3, 3]
    assert for_gguf(ready).metadata == ready.metadata  # made for GGUF already: the same


@pytest.mark.parametrize(
    ("key_list", "arch", "identified"),
    [
        ("Flux-v1-Dev", "flux", "Flux-v1 (Flux-v1-Dev)"),
        ("Wan-v2.1-T2V-14B", "wan", "Wan (Wan-v2.1-T2V-14B)"),
        ("Qwen-Image", "qwen_image", "Qwen-Image"),
    ],
)
def test_a_real_shaped_gguf_is_identified_with_its_storage(tmp_path, key_list, arch, identified):
    """A Q8_0 GGUF as city96 and QuantStack publish them, header only (its data a hole): 5-D
    tensors stored 2-D with their shape in `comfy.gguf.orig_shape`."""
    path = tmp_path / f"{key_list}-Q8_0.gguf"
    writer = gguf.GGUFWriter(path, arch)
    data_bytes = 0
    for name, shape in keylists.load(key_list):
        if len(shape) > 4:
            writer.add_array(f"comfy.gguf.orig_shape.{name}", list(shape))
            shape = (shape[0], int(np.prod(shape[1:])))
        quantized = len(shape) > 1 and np.prod(shape) > 1024 and shape[-1] % 32 == 0
        qtype = Q.Q8_0 if quantized else Q.F32
        byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, qtype) if quantized else shape
        nbytes = int(np.prod(byte_shape)) * (1 if quantized else 4)
        dtype = np.uint8 if quantized else np.float32
        writer.add_tensor_info(name, byte_shape, np.dtype(dtype), nbytes, raw_dtype=qtype)
        data_bytes += nbytes + (-nbytes % 32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with open(path, "r+b") as handle:  # the data: a hole after the (aligned) header
        handle.truncate(-(-handle.seek(0, 2) // 32) * 32 + data_bytes)
    result = run_mtk("inspect", path, "--no-metric", check=True)
    assert "Stored as Q8_0:" in result.stdout and "F32:" in result.stdout
    assert f"Model type identified as {identified}." in result.stdout


def test_a_gguf_copied_into_a_gguf_keeps_its_bytes(tmp_path):
    raw = random_blocks(Q.Q4_K, 8, 512, seed=5)
    path = gguf_file(tmp_path / "k.gguf", {"blocks.0.weight": (raw, Q.Q4_K)}, arch="wan")
    with mtk.open(path) as model:
        out = mtk.write_plan(convert(model, None), tmp_path / "copy.gguf")
    [tensor] = gguf.GGUFReader(out).tensors
    assert tensor.tensor_type == Q.Q4_K and np.array_equal(bits(tensor.data), raw)


def test_quantized_tensors_need_a_gguf_or_a_float_precision(tmp_path):
    raw = random_blocks(Q.Q8_0, 2, 64)
    path = gguf_file(tmp_path / "q.gguf", {"w": (raw, Q.Q8_0)})
    result = run_mtk("convert", path, tmp_path / "out.safetensors")
    assert result.returncode == 2
    assert "safetensors cannot store Q8_0" in result.stderr and "--precision" in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


# -- Bad GGUF files: one line, exit 2, nothing written


def damaged(tmp_path, how: str):
    raw = random_blocks(Q.Q8_0, 4, 64)
    path = gguf_file(tmp_path / "ok.gguf", {"w": (raw, Q.Q8_0)}, fields={"x.sizes": [1, 2]})
    data = bytearray(path.read_bytes())
    info = data.index(b"\x01\x00\x00\x00\x00\x00\x00\x00w") + 9  # name "w": dims follow
    if how == "truncated":
        data = data[:-100]
    elif how == "offset":  # after n_dims, 2 dims, the type: the offset
        struct.pack_into("<Q", data, info + 4 + 16 + 4, 1 << 40)
    elif how == "type":
        struct.pack_into("<I", data, info + 4 + 16, 99)
    elif how == "count":
        struct.pack_into("<Q", data, 8, 1 << 62)
    elif how == "array":  # the key, its type (array), the element type: then the count
        struct.pack_into("<Q", data, data.index(b"x.sizes") + 7 + 8, 1 << 50)
    elif how == "magic":
        data[:4] = b"GGUG"
    bad = tmp_path / f"{how}.gguf"
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("truncated", "reaches past the end"),
        ("offset", "reaches past the end"),
        ("type", "unknown GGUF type 99"),
        ("count", "more than its"),
        ("array", "a metadata array declares 1125899906842624 values"),
        ("magic", "is not a safetensors, GGUF or torch checkpoint file"),
    ],
)
def test_a_bad_gguf_is_one_line_and_exit_2(tmp_path, how, words):
    bad = damaged(tmp_path, how)
    result = run_mtk("inspect", bad)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:")
    assert words in result.stderr
    result = run_mtk("convert", bad, tmp_path / "out.safetensors", "--precision", "fp16")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_a_quantized_copy_is_told_from_its_source_by_how_far_it_moved(tmp_path):
    """`mtk diff` dequantizes chunk by chunk: a Q8_0 GGUF against the file it was made from
    differs by its rounding only."""
    from model_toolkit.diff import diff_models

    source, _ = wan_like(tmp_path)
    with mtk.open(source) as model:
        plan = convert(model, mtk.precision_dtype("Q8_0"))
        plan.metadata["general.architecture"] = "wan"
        out = mtk.write_plan(plan, tmp_path / "wan.gguf")
    with mtk.open(source) as a, mtk.open(out) as b:
        [other] = diff_models(a, b).classes
    assert other.status == "different" and other.tensors == 5
    assert other.cosine_similarity > 0.9999 and 0 < other.max_abs_diff < 0.05


def test_a_gguf_prunes_to_a_gguf_and_autoprune_leaves_it_alone(tmp_path):
    from model_toolkit.autoprune.job import inbox_files

    raw = random_blocks(Q.Q8_0, 4, 64)
    path = gguf_file(tmp_path / "model.gguf", {"blocks.0.weight": (raw, Q.Q8_0)}, arch="wan")
    (tmp_path / "other.safetensors").write_bytes(b"")
    assert [p.name for p in inbox_files(tmp_path)] == ["other.safetensors"]
    result = run_mtk("convert", path, tmp_path / "copy.gguf", check=True)
    assert "wrote" in result.stdout
    [tensor] = gguf.GGUFReader(tmp_path / "copy.gguf").tensors
    assert np.array_equal(bits(tensor.data), raw)


def test_the_compiled_q8_0_loop_makes_the_packages_bytes():
    """Halves round away from zero, zero blocks, -0.0, subnormal and huge scales, NaN and inf
    (those blocks are the package's own): the same bytes as `gguf.quants.quantize`."""
    from model_toolkit import quantized

    rng = np.random.default_rng(7)
    scales = rng.choice(np.float32([1e-40, 1e-8, 1e-3, 1, 1e3, 1e30]), size=(512, 1))
    values = (rng.standard_normal((512, 256)) * scales).astype(np.float32)
    values[0] = 0
    values[1, :32] = 0.5
    values[1, 5] = -127
    values[2] = np.arange(256, dtype=np.float32) * 0.25 - 32
    values[3] = -0.0
    values[4, 3], values[5, 9] = np.nan, np.inf
    ours = quantized.quantize(values, quantized.Q8_0)
    assert np.array_equal(ours, bits(gguf.quants.quantize(values, Q.Q8_0)))
