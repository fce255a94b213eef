"""Quantized layers in safetensors files: ComfyUI's fp8_scaled and mixed (nvfp4) files,
bitsandbytes NF4, Nunchaku: identified as their base model with each layer's format counted;
a weight's companions (scales, format JSON) travel with it through every operation, in their
own dtype; fp8-scaled weights dequantized exactly as `w.float() * scale` (torch the oracle)."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load_file

import model_toolkit as mtk
from conftest import key_list, run_mtk, write_sparse_safetensors
from model_toolkit.architectures import keylists
from model_toolkit.operations import convert, extract, prune, replace

DM = "model.diffusion_model."


def linear_layers(entries):
    """The names of the 2-D weights that quantizers make fp8 (no embeddings)."""
    return [
        n
        for n, s in entries
        if n.endswith(".weight")
        and len(s) == 2
        and "relative_attention_bias" not in n
        and not n.endswith("shared.weight")
    ]


def fp8_scaled(path, entries, with_values=(), scale=0.01, marker="scaled_fp8", under=""):
    """A ComfyUI fp8_scaled file: every Linear weight (under `under`) fp8 e4m3fn with its
    `.scale_weight`, and a marker; the weights in `with_values` get real fp8 values, the rest
    of the file is holes."""
    weights = {n for n in linear_layers(entries) if n.startswith(under)}
    layout, fill = [], {}
    rng = torch.Generator().manual_seed(0)
    for name, shape in entries:
        layout.append((name, shape))
        if name not in weights:
            continue
        if name in with_values:
            values = (torch.randn(shape, generator=rng) * 3).to(torch.float8_e4m3fn)
            fill[name] = (values.view(torch.uint8).numpy(), "F8_E4M3")
        else:
            fill[name] = (np.zeros(0), "F8_E4M3")
        stem = name[: -len(".weight")]
        layout.append((stem + ".scale_weight", ()))
        fill[stem + ".scale_weight"] = (np.array(scale, np.float32), "F32")
    layout.append((marker, (0,)))
    fill[marker] = (np.zeros(0), "F8_E4M3")
    return write_sparse_safetensors(path, layout, "BF16", fill=fill)


UMT5 = keylists.load("UMT5-XXL")


def test_an_fp8_scaled_text_encoder_is_its_base_with_its_layers_counted(tmp_path):
    path = fp8_scaled(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", UMT5)
    result = run_mtk("inspect", path, "--no-metric", check=True)
    assert "Model type identified as UMT5-XXL." in result.stdout
    assert "Quantized layers: fp8 e4m3fn, scaled: 168." in result.stdout  # 24 blocks x 7
    assert "Contains no junk data." in result.stdout
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert not analysis.unknown_keys and not analysis.junk_keys


def test_prune_keeps_each_scale_with_its_weight_in_float32(tmp_path):
    path = fp8_scaled(
        tmp_path / "te.safetensors",
        UMT5,
        with_values=["encoder.block.0.layer.0.SelfAttention.q.weight"],
    )
    with mtk.open(path) as model:
        out = mtk.write_plan(prune(model), tmp_path / "pruned.safetensors")
    ours, theirs = load_file(str(out)), load_file(str(path))
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype, name
        same = ours[name].reshape(-1).view(torch.uint8) == theirs[name].reshape(-1).view(
            torch.uint8
        )
        assert bool(same.all()), name
    assert sum(n.endswith(".scale_weight") for n in ours) == 168 and "scaled_fp8" in ours


def test_converting_to_bf16_dequantizes_as_w_float_times_scale(tmp_path):
    q = "encoder.block.0.layer.0.SelfAttention.q.weight"
    path = fp8_scaled(tmp_path / "te.safetensors", UMT5, with_values=[q], scale=0.0371)
    with mtk.open(path) as model:
        out = mtk.write_plan(
            convert(model, mtk.precision_dtype("bf16")), tmp_path / "bf16.safetensors"
        )
    ours, theirs = load_file(str(out)), load_file(str(path))
    assert not any(n.endswith(".scale_weight") for n in ours) and "scaled_fp8" not in ours
    assert len(ours) == len(UMT5)
    expected = (theirs[q].float() * theirs[q.replace(".weight", ".scale_weight")]).to(
        torch.bfloat16
    )
    assert ours[q].dtype == torch.bfloat16 and torch.equal(ours[q], expected)


FLUX_AIO = key_list("Checkpoint-Flux-dev-ComfyUI-AIO")


def test_extracting_from_an_fp8_all_in_one_takes_the_scales_and_marker(tmp_path):
    aio = fp8_scaled(
        tmp_path / "flux-aio-fp8.safetensors", FLUX_AIO, marker=DM + "scaled_fp8", under=DM
    )
    with mtk.open(aio) as model:
        analysis = mtk.analyze(model)
        assert analysis.architecture.startswith("Flux-v1") and not analysis.junk_keys
        plan = extract(model, "Flux-v1")
    names = {e.name for e in plan.entries}
    assert "scaled_fp8" in names and not any(n.startswith("model.") for n in names)
    scales = [e for e in plan.entries if e.name.endswith(".scale_weight")]
    assert scales and all(e.dtype.name == "F32" for e in scales)
    assert {e.name[: -len(".scale_weight")] + ".weight" for e in scales} <= names
    assert len(names) == len(keylists.load("Flux-v1-Dev")) + len(scales) + 1


def test_replacing_a_quantized_part_takes_its_scales_away(tmp_path):
    aio = fp8_scaled(tmp_path / "aio.safetensors", FLUX_AIO, marker=DM + "scaled_fp8", under=DM)
    bare = write_sparse_safetensors(
        tmp_path / "flux1-dev.safetensors", keylists.load("Flux-v1-Dev"), "BF16"
    )
    with mtk.open(aio) as target, mtk.open(bare) as donor:
        plan = replace(target, "Flux-v1", donor)
    names = [e.name for e in plan.entries]
    assert not any(n.endswith((".scale_weight", "scaled_fp8")) for n in names)
    assert sum(n.startswith(DM) for n in names) == len(keylists.load("Flux-v1-Dev"))


def nvfp4(path, entries):
    """A ComfyUI mixed file whose Linear layers are nvfp4: uint8 weights half as wide, fp8
    block scales per 16 values, a tensor scale, an input scale; formats in the header."""
    layout, fill, layers = [], {}, {}
    for name, shape in entries:
        if name in set(linear_layers(entries)) and shape[1] % 16 == 0:
            stem = name[: -len(".weight")]
            layout += [
                (name, (shape[0], shape[1] // 2)),
                (stem + ".weight_scale", (shape[0], shape[1] // 16)),
                (stem + ".weight_scale_2", ()),
                (stem + ".input_scale", ()),
            ]
            fill[name] = (np.zeros(0), "U8")
            fill[stem + ".weight_scale"] = (np.zeros(0), "F8_E4M3")
            fill[stem + ".weight_scale_2"] = (np.zeros(0), "F32")
            fill[stem + ".input_scale"] = (np.zeros(0), "F32")
            layers[stem] = {"format": "nvfp4"}
        else:
            layout.append((name, shape))
    metadata = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    return write_sparse_safetensors(path, layout, "BF16", fill=fill, metadata=metadata), layers


def test_an_nvfp4_mixed_file_is_matched_by_its_layers_real_widths(tmp_path):
    path, layers = nvfp4(tmp_path / "z_image_turbo_nvfp4.safetensors", keylists.load("Z-Image"))
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture == "Z-Image" and not analysis.unknown_keys
    assert analysis.quant.formats() == {"nvfp4": len(layers)}
    result = run_mtk("convert", path, tmp_path / "bf16.safetensors", "--precision", "bf16")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "nvfp4 layers" in result.stderr and "cannot be converted" in result.stderr
    assert not (tmp_path / "bf16.safetensors").exists()


def test_a_bitsandbytes_nf4_flux_is_found_by_its_names(tmp_path):
    """Forge's flux1-dev-bnb-nf4: each Linear weight flattened to bytes [n/2, 1] with its
    absmax, quant_map and quant_state beside it; the header has no layer shapes."""
    layout, fill = [], {}
    base = keylists.load("Flux-v1-Dev")
    for name, shape in base:
        if name in set(linear_layers(base)):
            count = int(np.prod(shape))
            layout += [
                (name, (count // 2, 1)),
                (name + ".absmax", (count // 64,)),
                (name + ".quant_map", (16,)),
                (name + ".quant_state.bitsandbytes__nf4", (100,)),
            ]
            fill[name] = (np.zeros(0), "U8")
            fill[name + ".quant_state.bitsandbytes__nf4"] = (np.zeros(0), "U8")
            fill[name + ".absmax"] = (np.zeros(0), "F32")
            fill[name + ".quant_map"] = (np.zeros(0), "F32")
        else:
            layout.append((name, shape))
    path = write_sparse_safetensors(tmp_path / "flux-nf4.safetensors", layout, "BF16", fill=fill)
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture == "Flux-v1" and not analysis.unknown_keys
    assert set(analysis.quant.formats()) == {"bitsandbytes nf4"}


def test_writing_fp8_scaled_chooses_amax_over_448_as_comfyui_does(tmp_path):
    q = "model.layers.0.self_attn.q_proj.weight"
    rng = torch.Generator().manual_seed(1)
    values = (torch.randn((2048, 1024), generator=rng) * 0.02).to(torch.bfloat16)
    fill = {q: (values.view(torch.uint16).numpy(), "BF16")}
    qwen3 = keylists.load("Qwen3-0.6B")  # Anima's text encoder: small enough to write whole
    path = write_sparse_safetensors(tmp_path / "qwen3.safetensors", qwen3, "BF16", fill=fill)
    result = run_mtk(
        "convert",
        path,
        tmp_path / "qwen3_fp8_scaled.safetensors",
        "--precision",
        "fp8_e4m3fn_scaled",
    )
    assert result.returncode == 0, result.stderr
    ours = load_file(str(tmp_path / "qwen3_fp8_scaled.safetensors"))
    scale = ours[q.replace(".weight", ".scale_weight")]
    assert scale.dtype == torch.float32 and scale.shape == ()
    amax = values.float().abs().max()
    assert torch.equal(scale, amax / torch.tensor(448.0))
    assert torch.equal(
        ours[q].view(torch.uint8),
        (values.float() / scale).to(torch.float8_e4m3fn).view(torch.uint8),
    )
    assert ours["scaled_fp8"].dtype == torch.float8_e4m3fn and ours["scaled_fp8"].numel() == 0
    assert sum(n.endswith(".scale_weight") for n in ours) == 28 * 7
    assert ours["model.embed_tokens.weight"].dtype == torch.bfloat16  # the embedding stays 16-bit
    # ... and it reads back as what ComfyUI makes of it: the same model, fp8-scaled
    again = run_mtk("inspect", tmp_path / "qwen3_fp8_scaled.safetensors", "--no-metric", check=True)
    assert "Quantized layers: fp8 e4m3fn, scaled: 196." in again.stdout
    assert "Model type identified as Qwen3-0.6B." in again.stdout


def test_the_metric_and_diff_read_fp8_scaled_weights_times_their_scales(tmp_path):
    """An fp8-scaled copy fingerprints and diffs as the model it stands for, not as its raw
    fp8 numbers (those are 1/scale times larger)."""
    from model_toolkit.diff import diff_models

    q = "model.layers.0.self_attn.q_proj.weight"
    rng = torch.Generator().manual_seed(2)
    values = (torch.randn((2048, 1024), generator=rng) * 0.02).to(torch.bfloat16)
    fill = {q: (values.view(torch.uint16).numpy(), "BF16")}
    source = write_sparse_safetensors(
        tmp_path / "qwen3.safetensors", keylists.load("Qwen3-0.6B"), "BF16", fill=fill
    )
    with mtk.open(source) as model:
        scaled = mtk.write_plan(
            convert(model, mtk.precision_dtype("fp8_e4m3fn_scaled")), tmp_path / "fp8.safetensors"
        )
    with mtk.open(source) as a, mtk.open(scaled) as b:
        result = diff_models(a, b)
        value = mtk.analyze(b).value(q)
        assert value.dtype.name == "F32"
        read = mtk.read_all(value)
    [te] = [c for c in result.classes if c.cls == "Qwen3-0.6B"]
    assert te.status == "different" and te.cosine_similarity > 0.999
    assert float(np.abs(read - values.float().numpy()).max()) < 0.01
