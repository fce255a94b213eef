"""`mtk lora apply`: LoRA, LoCon, LoHa, LoKr, full, norm and DoRA layers merged into models,
with torch as the oracle: each formula written here from its trainer's definition (sd-scripts,
LyCORIS, PEFT, diffusers' conversion of the BFL and SD3 layouts), not from our code.

Products of rank-1 factors are single multiplications, so there the result is bit-equal to
torch's; with higher ranks the matrix products sum in another order (BLAS vs torch), so the
comparison allows the output type's last bit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import model_toolkit as mtk
from conftest import DATA, key_list, run_mtk, write_sparse_safetensors
from model_toolkit.architectures.keylists import load_path
from model_toolkit.model import read_all
from model_toolkit.operations import lora_apply

SD1 = key_list("Checkpoint-SD1-LDM")
FLUX = key_list("Checkpoint-Flux-dev-ComfyUI-AIO")
SD3 = key_list("Checkpoint-SD3-medium-ComfyUI-AIO")


def randn(shape, seed, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def sparse_model(path, entries, fills, dtype="F16"):
    """A real-shaped model whose `fills` (name -> torch tensor) hold values, holes elsewhere."""
    names = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
    fill = {}
    for name, values in fills.items():
        typed = values.to(names[dtype])
        raw = typed.view(torch.int16) if typed.itemsize == 2 else typed
        fill[name] = (raw.numpy(), dtype)
    return write_sparse_safetensors(path, entries, dtype, fill=fill)


def ulps(ours: torch.Tensor, theirs: torch.Tensor) -> int:
    """The largest distance in units of the last place between two 16-bit float tensors."""
    a, b = ours.view(torch.int16).int(), theirs.view(torch.int16).int()
    a = torch.where(a < 0, -32768 - a, a)  # sign-magnitude to an ordered integer line
    b = torch.where(b < 0, -32768 - b, b)
    return int((a - b).abs().max())


def lora_delta(up, down, alpha, shape):
    """sd-scripts' LoRA: `up @ down`, conv kernels in down, scaled by alpha / rank."""
    rank = down.shape[0]
    return ((up.flatten(1) @ down.flatten(1)) * (alpha / rank)).reshape(shape)


def test_a_kohya_sd1_locon_changes_the_ldm_checkpoint_as_sd_scripts_defines(tmp_path):
    attn = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    conv = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    te = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    shapes = dict(SD1)
    weights = {attn: randn(shapes[attn], 1), conv: randn(shapes[conv], 2), te: randn(shapes[te], 3)}
    model = sparse_model(tmp_path / "model.safetensors", SD1, weights)
    factors = {  # module: (up, down, alpha): kohya names SD-v1's UNET as diffusers does
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (
            randn((320, 8), 4, 0.1),
            randn((8, 320), 5, 0.1),
            4.0,
        ),
        "lora_unet_down_blocks_0_resnets_0_conv1": (  # LoCon, rank 1: products exact
            randn((320, 1, 1, 1), 6, 0.1),
            randn((1, 320, 3, 3), 7, 0.1),
            1.0,
        ),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (
            randn((768, 8), 8, 0.1),
            randn((8, 768), 9, 0.1),
            8.0,
        ),
    }
    lora = {}
    for module, (up, down, alpha) in factors.items():
        lora[f"{module}.lora_up.weight"] = up.half()
        lora[f"{module}.lora_down.weight"] = down.half()
        lora[f"{module}.alpha"] = torch.tensor(alpha).half()
    save_file(lora, str(tmp_path / "lora.safetensors"))
    out = tmp_path / "out.safetensors"
    result = run_mtk("lora", "apply", model, f"{tmp_path / 'lora.safetensors'}:0.7", "-o", out)
    assert result.returncode == 0, result.stderr
    ours, theirs = load_file(str(out)), load_file(str(model))
    assert ours.keys() == theirs.keys()
    for target, module in zip(weights, factors, strict=True):
        up, down, alpha = (
            lora[f"{module}.{p}"] for p in ("lora_up.weight", "lora_down.weight", "alpha")
        )
        delta = lora_delta(up.float(), down.float(), float(alpha), theirs[target].shape)
        expected = (theirs[target].float() + delta * 0.7).half()
        assert ulps(ours[target], expected) <= (0 if target == conv else 1), target
        assert not torch.equal(ours[target], theirs[target])
    untouched = "model.diffusion_model.out.2.weight"
    assert torch.equal(ours[untouched], theirs[untouched])
    history = mtk.open(out).metadata["modeltoolkit.history"]
    assert '"op": "lora-apply"' in history and '"strength": 0.7' in history


def _flux_model(tmp_path):
    prefix = "model.diffusion_model."
    shapes = dict(FLUX)
    fills = {
        name: randn(shapes[prefix + name], i, 0.05)
        for i, name in enumerate(
            [
                "double_blocks.0.img_attn.qkv.weight",
                "single_blocks.0.linear1.weight",
                "final_layer.adaLN_modulation.1.weight",
                "double_blocks.0.txt_attn.qkv.bias",
                "double_blocks.0.txt_attn.qkv.weight",
            ]
        )
    }
    fills = {prefix + name: values.to(torch.bfloat16) for name, values in fills.items()}
    return sparse_model(tmp_path / "flux.safetensors", FLUX, fills, "BF16"), fills


def test_a_diffusers_flux_lora_changes_rows_of_bfl_fused_layers(tmp_path):
    """diffusers' names for BFL's fused layers: to_k is the second third of img_attn.qkv,
    proj_mlp the rows of linear1 after q, k and v, norm_out.linear the final adaLN with its
    shift and scale halves swapped (diffusers' convert_flux_transformer_checkpoint)."""
    model, theirs = _flux_model(tmp_path)  # its values: the file is too large to map whole
    h = 3072
    rank = 1  # rank 1: every product is one multiplication, bit-equal to torch's
    modules = {
        "transformer.transformer_blocks.0.attn.to_k": (h, h),
        "transformer.single_transformer_blocks.0.proj_mlp": (4 * h, h),
        "transformer.single_transformer_blocks.0.attn.to_q": (h, h),
        "transformer.norm_out.linear": (2 * h, h),
        "transformer.transformer_blocks.0.attn.add_v_proj": (h, h),
    }
    lora = {}
    for i, (module, (rows, cols)) in enumerate(modules.items()):
        lora[f"{module}.lora_A.weight"] = randn((rank, cols), 10 + i, 0.1).to(torch.bfloat16)
        lora[f"{module}.lora_B.weight"] = randn((rows, rank), 20 + i, 0.1).to(torch.bfloat16)
    lora["transformer.transformer_blocks.0.attn.add_v_proj.lora_B.bias"] = randn((h,), 30, 0.1).to(
        torch.bfloat16
    )
    save_file(lora, str(tmp_path / "lora.safetensors"))

    def delta(module):
        a, b = lora[f"{module}.lora_A.weight"].float(), lora[f"{module}.lora_B.weight"].float()
        return b @ a  # no alpha: PEFT's scale 1

    p = "model.diffusion_model."
    qkv = theirs[p + "double_blocks.0.img_attn.qkv.weight"].float().clone()
    qkv[h : 2 * h] += delta("transformer.transformer_blocks.0.attn.to_k")
    linear1 = theirs[p + "single_blocks.0.linear1.weight"].float().clone()
    linear1[:h] += delta("transformer.single_transformer_blocks.0.attn.to_q")
    linear1[3 * h :] += delta("transformer.single_transformer_blocks.0.proj_mlp")
    final = theirs[p + "final_layer.adaLN_modulation.1.weight"].float().clone()
    norm_out = delta("transformer.norm_out.linear")
    final += torch.cat([norm_out[h:], norm_out[:h]])  # diffusers' [scale, shift] -> BFL's
    txt_qkv = theirs[p + "double_blocks.0.txt_attn.qkv.weight"].float().clone()
    txt_qkv[2 * h :] += delta("transformer.transformer_blocks.0.attn.add_v_proj")
    txt_bias = theirs[p + "double_blocks.0.txt_attn.qkv.bias"].float().clone()
    txt_bias[2 * h :] += lora[
        "transformer.transformer_blocks.0.attn.add_v_proj.lora_B.bias"
    ].float()
    expected = {
        "double_blocks.0.img_attn.qkv.weight": qkv,
        "single_blocks.0.linear1.weight": linear1,
        "final_layer.adaLN_modulation.1.weight": final,
        "double_blocks.0.txt_attn.qkv.weight": txt_qkv,
        "double_blocks.0.txt_attn.qkv.bias": txt_bias,
    }
    with mtk.open(model) as m, mtk.open(tmp_path / "lora.safetensors") as lr:
        plan = lora_apply(m, [(lr, 1.0)])
        entries = plan.tensors
        for name, values in expected.items():
            ours = torch.from_numpy(read_all(entries[p + name]).view(np.int16).copy())
            assert torch.equal(ours.view(torch.bfloat16), values.to(torch.bfloat16)), name
        assert entries[p + "double_blocks.1.img_attn.qkv.weight"].is_copy


def test_an_sd3_lora_in_diffusers_names_changes_the_last_context_block_swapped(tmp_path):
    """SD3's last joint block: diffusers' norm1_context is the context adaLN with its halves
    swapped (convert_sd3_transformer_checkpoint_to_diffusers), as norm_out is."""
    p = "model.diffusion_model."
    name = p + "joint_blocks.23.context_block.adaLN_modulation.1.weight"
    shapes = dict(SD3)
    original = randn(shapes[name], 1).half()
    model = sparse_model(tmp_path / "sd3.safetensors", SD3, {name: original})
    a, b = randn((1, 1536), 2, 0.1), randn((3072, 1), 3, 0.1)
    lora = {
        "transformer.transformer_blocks.23.norm1_context.linear.lora_A.weight": a.half(),
        "transformer.transformer_blocks.23.norm1_context.linear.lora_B.weight": b.half(),
    }
    save_file(lora, str(tmp_path / "lora.safetensors"))
    delta = lora[next(k for k in lora if "lora_B" in k)].float() @ lora[next(iter(lora))].float()
    theirs = original.float()
    expected = (theirs + torch.cat([delta[1536:], delta[:1536]]) * 0.5).half()
    with mtk.open(model) as m, mtk.open(tmp_path / "lora.safetensors") as lr:
        ours = read_all(lora_apply(m, [(lr, 0.5)]).tensors[name])
    assert torch.equal(torch.from_numpy(ours.view(np.int16).copy()).view(torch.float16), expected)


# Real LoRA key lists (tests/data/keys/lora) against the real checkpoints they are for.
REAL = {
    "LoRA-kohya-SD1-UNET-LoCon": "Checkpoint-SD1-LDM",
    "LoRA-PEFT-SD1-UNET": "Checkpoint-SD1-LDM",
    "LoRA-kohya-SDXL-UNET": "Checkpoint-SDXL-SGM",
    "LoRA-kohya-SDXL-UNET-LoCon": "Checkpoint-SDXL-SGM",
    "LoRA-kohya-SDXL-UNET-diffusers-names": "Checkpoint-SDXL-SGM",
    "LoRA-PEFT-SDXL-UNET": "Checkpoint-SDXL-SGM",
    "LoRA-kohya-SDXL-TE1": "Checkpoint-SDXL-SGM",
    "LoRA-kohya-SDXL-TE2": "Checkpoint-SDXL-SGM",
    "LoRA-Flux-kohya-real": "Checkpoint-Flux-dev-ComfyUI-AIO",
    "LoRA-Flux-kohya-with-TE1-real": "Checkpoint-Flux-dev-ComfyUI-AIO",
    "LoRA-Flux-diffusers-real": "Checkpoint-Flux-dev-ComfyUI-AIO",
    "LoRA-Flux-PEFT-base-model-real": "Checkpoint-Flux-dev-ComfyUI-AIO",
    "LoRA-Flux-aitoolkit-real": "Checkpoint-Flux-dev-ComfyUI-AIO",
    "LoRA-Flux-OneTrainer-DoRA-real": "Checkpoint-Flux-dev-ComfyUI-AIO",
    "LoRA-Flux-xlabs-sample": "Checkpoint-Flux-dev-ComfyUI-AIO",
    "LoRA-kohya-SD3-medium": "Checkpoint-SD3-medium-ComfyUI-AIO",
}


@pytest.mark.parametrize("lora_list", sorted(REAL))
def test_every_layer_of_a_real_lora_finds_its_tensor(tmp_path, lora_list):
    entries = load_path(DATA / "keys" / "lora" / f"{lora_list}.txt")
    entries = [(n, tuple(4 if s == -1 else s for s in shape)) for n, shape in entries]
    lora = write_sparse_safetensors(tmp_path / "lora.safetensors", entries)
    model = write_sparse_safetensors(tmp_path / "model.safetensors", key_list(REAL[lora_list]))
    with mtk.open(model) as m, mtk.open(lora) as lr:
        plan = lora_apply(m, [(lr, 1.0)])
    assert plan.warnings == []  # every layer found its tensor, of its shape
    assert sum(entry.transform is not None for entry in plan.entries) > 0


def small_model(path):
    """A model no architecture matches: LoRAs name its layers as they are."""
    weights = {
        "blocks.0.linear.weight": randn((64, 48), 1),
        "blocks.0.other.weight": randn((64, 48), 2),
        "blocks.0.dora.weight": randn((64, 48), 3),
        "blocks.0.dora_in.weight": randn((64, 48), 4),
        "blocks.0.conv.weight": randn((32, 16, 3, 3), 5),
        "blocks.0.conv.bias": randn((32,), 6),
        "blocks.0.conv2.weight": randn((32, 16, 3, 3), 7),
        "blocks.0.conv3.weight": randn((32, 16, 3, 3), 8),
        "blocks.0.norm.weight": randn((64,), 9),
    }
    entries = [(name, tuple(v.shape)) for name, v in weights.items()]
    return sparse_model(path, entries, weights, "F32"), weights


def test_lycoris_families_and_dora_merge_as_their_trainers_define(tmp_path):
    model, w = small_model(tmp_path / "model.safetensors")
    r = 4
    t = {  # LyCORIS and PEFT tensors, float32
        # LoHa: (w1a @ w1b) * (w2a @ w2b) * alpha / rank
        "lora_unet_blocks_0_linear.hada_w1_a": randn((64, r), 10),
        "lora_unet_blocks_0_linear.hada_w1_b": randn((r, 48), 11),
        "lora_unet_blocks_0_linear.hada_w2_a": randn((64, r), 12),
        "lora_unet_blocks_0_linear.hada_w2_b": randn((r, 48), 13),
        "lora_unet_blocks_0_linear.alpha": torch.tensor(2.0),
        # LoHa with Tucker cores (conv): w1a and w2a are [rank, out]
        "lora_unet_blocks_0_conv2.hada_t1": randn((r, r, 3, 3), 14),
        "lora_unet_blocks_0_conv2.hada_w1_a": randn((r, 32), 15),
        "lora_unet_blocks_0_conv2.hada_w1_b": randn((r, 16), 16),
        "lora_unet_blocks_0_conv2.hada_t2": randn((r, r, 3, 3), 17),
        "lora_unet_blocks_0_conv2.hada_w2_a": randn((r, 32), 18),
        "lora_unet_blocks_0_conv2.hada_w2_b": randn((r, 16), 19),
        "lora_unet_blocks_0_conv2.alpha": torch.tensor(1.0),
        # LoKr (conv): w1 whole, w2 as a product; kron(w1, w2) * alpha / rank of w2
        "lora_unet_blocks_0_conv.lokr_w1": randn((4, 4), 20),
        "lora_unet_blocks_0_conv.lokr_w2_a": randn((8, 2), 21),
        "lora_unet_blocks_0_conv.lokr_w2_b": randn((2, 4 * 9), 22),
        "lora_unet_blocks_0_conv.alpha": torch.tensor(1.0),
        # LoCon with a Tucker core (lora_mid)
        "lora_unet_blocks_0_conv3.lora_up.weight": randn((32, r, 1, 1), 23),
        "lora_unet_blocks_0_conv3.lora_mid.weight": randn((r, r, 3, 3), 24),
        "lora_unet_blocks_0_conv3.lora_down.weight": randn((r, 16, 1, 1), 25),
        # full: the change itself, weight and bias; norm: a norm layer's
        "lora_unet_blocks_0_other.diff": randn((64, 48), 26),
        "lora_unet_blocks_0_norm.w_norm": randn((64,), 27),
        # DoRA as PEFT saves it: magnitude per output row
        "blocks.0.dora.lora_A.weight": randn((r, 48), 28),
        "blocks.0.dora.lora_B.weight": randn((64, r), 29),
        "blocks.0.dora.lora_magnitude_vector": randn((64,), 30).abs() + 1,
        # DoRA as OneTrainer saves it: magnitude per input channel, [1, in]
        "lora_unet_blocks_0_dora_in.lora_down.weight": randn((r, 48), 31),
        "lora_unet_blocks_0_dora_in.lora_up.weight": randn((64, r), 32),
        "lora_unet_blocks_0_dora_in.alpha": torch.tensor(2.0),
        "lora_unet_blocks_0_dora_in.dora_scale": randn((1, 48), 33).abs() + 1,
    }
    conv_diff = {"lora_unet_blocks_0_conv.diff_b": randn((32,), 34)}
    save_file(t, str(tmp_path / "lora.safetensors"))
    save_file(conv_diff, str(tmp_path / "bias.safetensors"))
    s = 0.8

    loha = (
        (t["lora_unet_blocks_0_linear.hada_w1_a"] @ t["lora_unet_blocks_0_linear.hada_w1_b"])
        * (t["lora_unet_blocks_0_linear.hada_w2_a"] @ t["lora_unet_blocks_0_linear.hada_w2_b"])
        * (2.0 / r)
    )

    def tucker(core, a, b):  # LyCORIS rebuild: einsum("i j ..., j r, i p -> p r ...")
        return torch.einsum("ijkl,jr,ip->prkl", core, b, a)

    c = "lora_unet_blocks_0_conv2."
    loha_tucker = (
        tucker(t[c + "hada_t1"], t[c + "hada_w1_a"], t[c + "hada_w1_b"])
        * tucker(t[c + "hada_t2"], t[c + "hada_w2_a"], t[c + "hada_w2_b"])
        * (1.0 / r)
    )
    k = "lora_unet_blocks_0_conv."
    w2 = (t[k + "lokr_w2_a"] @ t[k + "lokr_w2_b"]).reshape(8, 4, 3, 3)
    lokr = torch.kron(t[k + "lokr_w1"][:, :, None, None], w2) * (1.0 / 2)
    m = "lora_unet_blocks_0_conv3."
    up, mid, down = (t[m + p] for p in ("lora_up.weight", "lora_mid.weight", "lora_down.weight"))
    locon = torch.einsum("ijkl,jr,pi->prkl", mid, down.flatten(1), up.flatten(1))

    def dora(weight, delta, magnitude, per_output):  # PEFT: m * (W + dW) / ||W + dW||
        merged = weight + delta
        norm = merged.norm(dim=1, keepdim=True) if per_output else merged.norm(dim=0, keepdim=True)
        return magnitude * merged / norm

    peft = dora(
        w["blocks.0.dora.weight"],
        t["blocks.0.dora.lora_B.weight"] @ t["blocks.0.dora.lora_A.weight"],
        t["blocks.0.dora.lora_magnitude_vector"][:, None],
        True,
    )
    d = "lora_unet_blocks_0_dora_in."
    onetrainer = dora(
        w["blocks.0.dora_in.weight"],
        (t[d + "lora_up.weight"] @ t[d + "lora_down.weight"]) * (2.0 / r),
        t[d + "dora_scale"],
        False,
    )
    expected = {
        "blocks.0.linear.weight": (w["blocks.0.linear.weight"] + loha * s, 1e-6),
        "blocks.0.conv2.weight": (w["blocks.0.conv2.weight"] + loha_tucker * s, 1e-5),
        "blocks.0.conv.weight": (w["blocks.0.conv.weight"] + lokr * s, 1e-6),
        "blocks.0.conv3.weight": (w["blocks.0.conv3.weight"] + locon * s, 1e-5),
        "blocks.0.other.weight": (
            w["blocks.0.other.weight"] + t["lora_unet_blocks_0_other.diff"] * s,
            0,
        ),
        "blocks.0.norm.weight": (
            w["blocks.0.norm.weight"] + t["lora_unet_blocks_0_norm.w_norm"] * s,
            0,
        ),
        "blocks.0.dora.weight": (
            w["blocks.0.dora.weight"] + (peft - w["blocks.0.dora.weight"]) * s,
            1e-5,
        ),
        "blocks.0.dora_in.weight": (
            w["blocks.0.dora_in.weight"] + (onetrainer - w["blocks.0.dora_in.weight"]) * s,
            1e-5,
        ),
        "blocks.0.conv.bias": (w["blocks.0.conv.bias"] + conv_diff[k + "diff_b"], 0),
    }
    out = tmp_path / "out.safetensors"
    loras = [f"{tmp_path / 'lora.safetensors'}:{s}", str(tmp_path / "bias.safetensors")]
    result = run_mtk("lora", "apply", model, *loras, "-o", out)
    assert result.returncode == 0, result.stderr
    ours = load_file(str(out))
    for name, (values, tolerance) in expected.items():
        if tolerance == 0:  # elementwise: the same operations, the same bits
            assert torch.equal(ours[name], values), name
        else:
            torch.testing.assert_close(ours[name], values, rtol=tolerance, atol=tolerance * 10)
            assert not torch.equal(ours[name], w[name])


def test_loras_are_added_in_the_order_given(tmp_path):
    model, w = small_model(tmp_path / "model.safetensors")
    first = {"lora_unet_blocks_0_other.diff": randn((64, 48), 40)}
    second = {"lora_unet_blocks_0_other.diff": randn((64, 48), 41)}
    save_file(first, str(tmp_path / "a.safetensors"))
    save_file(second, str(tmp_path / "b.safetensors"))
    out = tmp_path / "out.safetensors"
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run_mtk("lora", "apply", model, f"{a}:0.5", f"{b}:-1", "-o", out).returncode == 0
    name = "blocks.0.other.weight"
    expected = (w[name] + first["lora_unet_blocks_0_other.diff"] * 0.5) + second[
        "lora_unet_blocks_0_other.diff"
    ] * -1.0
    assert torch.equal(load_file(str(out))[name], expected)


def test_a_lora_of_which_some_layers_are_not_in_the_model_is_applied_with_a_warning(tmp_path):
    unet_only = [
        (n[len("model.diffusion_model.") :], s)
        for n, s in key_list("Checkpoint-SDXL-SGM")
        if n.startswith("model.diffusion_model.")
    ]
    model = write_sparse_safetensors(tmp_path / "unet.safetensors", unet_only)
    entries = []
    for name in ("LoRA-kohya-SDXL-UNET", "LoRA-kohya-SDXL-TE1"):
        listed = load_path(DATA / "keys" / "lora" / f"{name}.txt")
        entries += [(n, tuple(4 if x == -1 else x for x in shape)) for n, shape in listed]
    lora = write_sparse_safetensors(tmp_path / "lora.safetensors", entries)
    with mtk.open(model) as m, mtk.open(lora) as lr:
        plan = lora_apply(m, [(lr, 1.0)])
    assert len(plan.warnings) == 1 and "72 of its" in plan.warnings[0], plan.warnings
    assert "left out" in plan.warnings[0]


def _refused(tmp_path, *args):
    out = tmp_path / "never.safetensors"
    result = run_mtk("lora", "apply", *args, "-o", out)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    return lines[0]


def test_bad_input_is_one_error_line_and_nothing_written(tmp_path):
    sd1 = write_sparse_safetensors(tmp_path / "sd1.safetensors", SD1)
    listed = load_path(DATA / "keys" / "lora" / "LoRA-kohya-SDXL-UNET.txt")
    xl = write_sparse_safetensors(
        tmp_path / "xl.safetensors", [(n, tuple(4 if x == -1 else x for x in s)) for n, s in listed]
    )
    assert "is a LoRA for SD-XL; sd1.safetensors is SD-v1" in _refused(tmp_path, sd1, xl)
    assert "is a LoRA (LoRA-XL), not a model a LoRA applies to" in _refused(tmp_path, xl, sd1)
    assert "sd1.safetensors is not a LoRA" in _refused(tmp_path, sd1, sd1)
    model, _ = small_model(tmp_path / "small.safetensors")
    wrong = {
        "lora_unet_blocks_0_linear.lora_down.weight": torch.zeros(4, 47),
        "lora_unet_blocks_0_linear.lora_up.weight": torch.zeros(64, 4),
    }
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    line = _refused(tmp_path, model, tmp_path / "wrong.safetensors")
    assert "does not fit the model: its change is [64, 47], the layer is [64, 48]" in line
    save_file(
        {
            "lora_unet_x.lora_down.weight": torch.zeros(4, 48),
            "lora_unet_x.lora_up.weight": torch.zeros(64, 4),
        },
        str(tmp_path / "other.safetensors"),
    )
    assert "none of its 1 layers is in the model" in _refused(
        tmp_path, model, tmp_path / "other.safetensors"
    )
    save_file(
        {"lora_unet_blocks_0_linear.oft_blocks": torch.zeros(4, 12, 12)},
        str(tmp_path / "oft.safetensors"),
    )
    assert "is a OFT adapter" in _refused(tmp_path, model, tmp_path / "oft.safetensors")
    save_file(
        {"lora_unet_blocks_0_linear.lora_down.weight": torch.zeros(4, 48)},
        str(tmp_path / "half.safetensors"),
    )
    assert "lacks up" in _refused(tmp_path, model, tmp_path / "half.safetensors")


def test_a_path_with_a_colon_is_a_path_unless_a_number_follows(tmp_path):
    from model_toolkit.cli import _lora_and_strength

    assert _lora_and_strength("a:b.safetensors") == (Path("a:b.safetensors"), 1.0)
    assert _lora_and_strength("C:/x.safetensors:0.25") == (Path("C:/x.safetensors"), 0.25)
    assert math.isclose(_lora_and_strength("x.safetensors:-1")[1], -1.0)


def test_the_compiled_widening_and_sum_are_exact_for_every_float16():
    """lora apply widens each changed tensor and adds its change in one compiled pass (F16C
    where the CPU has it): every float16 bit pattern gives numpy's float32, NaN stays NaN."""
    from model_toolkit.operations.merge import added, widened

    halves = np.arange(65536, dtype=np.uint16).view(np.float16)
    expected = halves.astype(np.float32)
    number = ~np.isnan(expected)
    ours = widened(halves)
    assert np.array_equal(ours[number].view(np.uint32), expected[number].view(np.uint32))
    assert np.isnan(ours[~number]).all()
    delta = np.random.default_rng(0).standard_normal(65536).astype(np.float32)
    with np.errstate(invalid="ignore"):
        summed = expected + delta * np.float32(0.7)
    ours = added(halves, delta, 0.7)
    assert np.array_equal(ours[number].view(np.uint32), summed[number].view(np.uint32))
    assert np.isnan(ours[~number]).all()
