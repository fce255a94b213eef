"""`mtk lora extract`, `lora resize` and `lora convert`, with torch as the oracle: the SVD's
best rank-r approximation (Eckart-Young: its error is the dropped singular values), extract
then apply recovers the change within that error, and conversion between trainers' names
changes no layer's delta."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import model_toolkit as mtk
from conftest import DATA, key_list, run_mtk, write_sparse_safetensors
from model_toolkit.architectures.keylists import load_path
from model_toolkit.lora.svd import rank_of
from model_toolkit.model import read_all
from model_toolkit.operations import lora_apply, lora_convert, lora_extract

SD1 = key_list("Checkpoint-SD1-LDM")
ATTN = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
CONV = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
TE = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"


def randn(shape, seed, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def _fp16(path, fills):
    fill = {n: (v.half().view(torch.int16).numpy(), "F16") for n, v in fills.items()}
    return write_sparse_safetensors(path, SD1, "F16", fill=fill)


@pytest.fixture
def tuned_and_base(tmp_path):
    """Two SD-v1 checkpoints that differ in three layers by a change of rank 6 and noise."""
    shapes = dict(SD1)
    base = {n: randn(shapes[n], i) for i, n in enumerate((ATTN, CONV, TE))}
    tuned = {}
    for i, (name, weights) in enumerate(base.items()):
        rows, cols = weights.shape[0], weights[0].numel()
        low = randn((rows, 6), 10 + i) @ randn((6, cols), 20 + i) * 0.02
        tuned[name] = weights + low.reshape(weights.shape) + randn(weights.shape, 30 + i, 1e-3)
    return (
        _fp16(tmp_path / "tuned.safetensors", tuned),
        _fp16(tmp_path / "base.safetensors", base),
    )


def test_extract_is_the_svd_of_the_change_and_apply_gives_it_back(tmp_path, tuned_and_base):
    tuned, base = tuned_and_base
    out = tmp_path / "lora.safetensors"
    result = run_mtk("lora", "extract", tuned, base, "--rank", "4", "--conv-rank", "4", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "SVD" in result.stderr and "reading" in result.stderr and "3 layers" in result.stderr
    lora = load_file(str(out))
    t, b = load_file(str(tuned)), load_file(str(base))
    modules = {
        ATTN: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        CONV: "lora_unet_down_blocks_0_resnets_0_conv1",
        TE: "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    }
    assert len(lora) == 9
    for name, module in modules.items():
        change = (t[name].float() - b[name].float()).reshape(t[name].shape[0], -1)
        u, s, vh = torch.linalg.svd(change, full_matrices=False)
        best = (u[:, :4] * s[:4]) @ vh[:4]
        up, down = lora[f"{module}.lora_up.weight"], lora[f"{module}.lora_down.weight"]
        assert float(lora[f"{module}.alpha"]) == 4.0 and down.shape[0] == 4
        assert up.shape[2:] == (1,) * (t[name].dim() - 2) and down.shape[1:] == t[name].shape[1:]
        ours = up.float().flatten(1) @ down.float().flatten(1)
        error, floor = (ours - change).norm(), s[4:].norm()  # the SVD's own error
        assert error <= floor * 1.01 + 1e-2, name
        torch.testing.assert_close(ours, best, atol=2e-3, rtol=0)  # fp16 factors
    with mtk.open(base) as model, mtk.open(out) as extracted:  # the three tensors alone
        plan = lora_apply(model, [(extracted, 1.0)]).tensors
        back = {name: torch.from_numpy(read_all(plan[name]).copy()) for name in modules}
    for name in modules:
        change = (t[name].float() - b[name].float()).reshape(t[name].shape[0], -1)
        s = torch.linalg.svdvals(change)
        recovered = (back[name].float() - t[name].float()).reshape(change.shape)
        assert recovered.norm() <= s[4:].norm() * 1.01 + 0.05, name  # + fp16 rounding
    report = run_mtk("inspect", out)
    assert "LoRA for SD-v" in report.stdout and "rank 4, alpha 4" in report.stdout, report.stdout
    metadata = mtk.open(out).metadata
    assert metadata["ss_network_dim"] == "4" and json.loads(metadata["ss_network_args"])


@pytest.mark.slow
def test_a_whole_sd1_extraction_is_identified_as_an_sd1_lora_with_no_junk(tmp_path):
    """Every layer changed: the LoRA has sd-scripts' layers for SD-v1 and no others (no time
    embedding, no resnet shortcut), so inspect finds an SD-v1 LoRA, clean."""
    rng = np.random.default_rng(0)
    fill = {
        n: ((rng.standard_normal(int(np.prod(s)), np.float32) * 0.01).astype(np.float16), "F16")
        for n, s in SD1
        if n.endswith(".weight") and len(s) >= 2 and not n.startswith("first_stage_model.")
    }
    fill = {n: (v.reshape(dict(SD1)[n]).view(np.int16), t) for n, (v, t) in fill.items()}
    tuned = write_sparse_safetensors(tmp_path / "tuned.safetensors", SD1, "F16", fill=fill)
    base = write_sparse_safetensors(tmp_path / "base.safetensors", SD1, "F16")
    out = tmp_path / "lora.safetensors"
    assert run_mtk("lora", "extract", tuned, base, "--rank", "8", "-o", out).returncode == 0
    report = run_mtk("inspect", out).stdout
    assert "identified as LoRA-v1." in report and "LoRA for SD-v1: rank 8, alpha 8." in report
    assert "no junk" in report, report


def test_extract_leaves_out_convolutions_without_conv_rank_and_unchanged_layers(
    tmp_path, tuned_and_base
):
    tuned, base = tuned_and_base
    with mtk.open(tuned) as a, mtk.open(base) as b:
        plan, timing = lora_extract(a, b, 8)
    modules = {name.rsplit(".", 2)[0] for name in plan.tensors}
    assert modules == {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    }
    assert timing.layers == 2 and timing.skipped > 100


def test_dynamic_ranks_follow_sd_scripts_rules():
    s = np.array([10.0, 5.0, 2.0, 1.0, 0.5])
    assert rank_of(s, 32, ("sv-ratio", 4.0)) == 2  # values >= 10 / 4
    assert rank_of(s, 1, ("sv-ratio", 4.0)) == 1  # never above --rank
    fro = np.sqrt(np.cumsum(s**2) / np.sum(s**2))
    assert rank_of(s, 32, ("sv-fro", 0.99)) == int(np.argmax(fro >= 0.99)) + 1 == 3
    assert rank_of(s, 32, ("sv-cumulative", 0.9)) == 3  # (10 + 5 + 2) / 18.5 >= 0.9
    assert rank_of(s, 3, None) == 3


def test_dynamic_extraction_keeps_the_rank_the_change_has(tmp_path, tuned_and_base):
    tuned, base = tuned_and_base
    with mtk.open(tuned) as a, mtk.open(base) as b:
        plan, _ = lora_extract(a, b, 64, dynamic=("sv-ratio", 20.0))
    down = plan.tensors[
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"
    ]
    assert down.shape[0] == 6  # the change's rank: the noise is far below S[0] / 20


def test_resize_keeps_the_scale_and_is_the_svd_of_up_times_down(tmp_path):
    module = "lora_unet_blocks_0_linear"
    up, down = randn((64, 16), 1), randn((16, 48), 2)
    save_file(
        {
            f"{module}.lora_up.weight": up,
            f"{module}.lora_down.weight": down,
            f"{module}.alpha": torch.tensor(8.0),
        },
        str(tmp_path / "lora.safetensors"),
    )
    out = tmp_path / "small.safetensors"
    result = run_mtk("lora", "resize", tmp_path / "lora.safetensors", "--rank", "4", "-o", out)
    assert result.returncode == 0, result.stderr
    small = load_file(str(out))
    delta = (up @ down) * (8.0 / 16)
    u, s, vh = torch.linalg.svd(up @ down, full_matrices=False)
    best = ((u[:, :4] * s[:4]) @ vh[:4]) * (8.0 / 16)
    alpha, rank = float(small[f"{module}.alpha"]), small[f"{module}.lora_down.weight"].shape[0]
    ours = (small[f"{module}.lora_up.weight"] @ small[f"{module}.lora_down.weight"]) * (
        alpha / rank
    )
    assert rank == 4 and alpha == pytest.approx(0.5 * 4)
    torch.testing.assert_close(ours, best, atol=1e-4, rtol=1e-4)
    assert (ours - delta).norm() == pytest.approx(float(s[4:].norm() * 0.5), rel=1e-3)


def _flux_kohya(tmp_path):
    """A real-keyed kohya Flux LoRA (rank 16) with values in a fused layer of each kind."""
    entries = load_path(DATA / "keys" / "lora" / "LoRA-Flux-kohya-real.txt")
    shapes = dict(entries)
    tensors = {}
    for i, module in enumerate(
        (
            "lora_unet_double_blocks_0_img_attn_qkv",
            "lora_unet_single_blocks_0_linear1",
            "lora_unet_double_blocks_0_img_mlp_0",
        )
    ):
        up, down = shapes[f"{module}.lora_up.weight"], shapes[f"{module}.lora_down.weight"]
        tensors[f"{module}.lora_up.weight"] = randn(up, i, 0.1).to(torch.bfloat16)
        tensors[f"{module}.lora_down.weight"] = randn(down, 10 + i, 0.1).to(torch.bfloat16)
        tensors[f"{module}.alpha"] = torch.tensor(8.0).to(torch.bfloat16)
    values = {n: (t.view(torch.int16).numpy(), "BF16") for n, t in tensors.items()}
    path = write_sparse_safetensors(tmp_path / "kohya.safetensors", entries, "BF16", fill=values)
    return path, tensors


def _delta(tensors, module, down="lora_down.weight", up="lora_up.weight"):
    a, b = tensors[f"{module}.{down}"].float(), tensors[f"{module}.{up}"].float()
    alpha = tensors.get(f"{module}.alpha")
    scale = float(alpha) / a.shape[0] if alpha is not None else 1.0
    return (b.flatten(1) @ a.flatten(1)) * scale


def test_convert_flux_kohya_to_diffusers_and_back_changes_no_delta(tmp_path):
    path, original = _flux_kohya(tmp_path)
    out = tmp_path / "diffusers.safetensors"
    result = run_mtk("lora", "convert", path, "--to", "diffusers", "-o", out)
    assert result.returncode == 0, result.stderr
    d = load_file(str(out))
    assert not any(name.endswith(".alpha") for name in d)
    fused = _delta(original, "lora_unet_double_blocks_0_img_attn_qkv")
    for i, part in enumerate(("to_q", "to_k", "to_v")):
        ours = _delta(
            d, f"transformer.transformer_blocks.0.attn.{part}", "lora_A.weight", "lora_B.weight"
        )
        torch.testing.assert_close(ours, fused[i * 3072 : (i + 1) * 3072], atol=2e-3, rtol=1e-2)
    linear1 = _delta(original, "lora_unet_single_blocks_0_linear1")
    mlp = _delta(
        d, "transformer.single_transformer_blocks.0.proj_mlp", "lora_A.weight", "lora_B.weight"
    )
    torch.testing.assert_close(mlp, linear1[9216:], atol=2e-3, rtol=1e-2)
    back_path = tmp_path / "back.safetensors"
    assert run_mtk("lora", "convert", out, "--to", "kohya", "-o", back_path).returncode == 0
    back = load_file(str(back_path))
    for module in ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1"):
        assert back[f"{module}.lora_down.weight"].shape[0] == 16 * (3 if "qkv" in module else 4)
        torch.testing.assert_close(
            _delta(back, module), _delta(original, module), atol=4e-3, rtol=2e-2
        )
    mlp0 = "lora_unet_double_blocks_0_img_mlp_0"  # the same cut: down as it was, scale in up
    assert torch.equal(back[f"{mlp0}.lora_down.weight"], original[f"{mlp0}.lora_down.weight"])
    assert float(back[f"{mlp0}.alpha"]) == 16.0
    torch.testing.assert_close(_delta(back, mlp0), _delta(original, mlp0), atol=1e-3, rtol=1e-2)
    with mtk.open(path) as f:  # kohya to kohya: every tensor as it was
        same = lora_convert(f, "kohya")
        for module in ("lora_unet_double_blocks_0_img_attn_qkv", mlp0):
            for part in ("lora_down.weight", "lora_up.weight", "alpha"):
                ours = same.tensors[f"{module}.{part}"].reads.read()
                assert (
                    ours.tobytes()
                    == original[f"{module}.{part}"].view(torch.int16).numpy().tobytes()
                )


def test_convert_sdxl_kohya_to_peft_and_diffusers_names(tmp_path):
    entries = load_path(DATA / "keys" / "lora" / "LoRA-kohya-SDXL-UNET.txt")
    entries = [(n, tuple(4 if s == -1 else s for s in shape)) for n, shape in entries]
    lora = write_sparse_safetensors(tmp_path / "xl.safetensors", entries)
    with mtk.open(lora) as f:
        diffusers = lora_convert(f, "diffusers")
        peft = lora_convert(f, "peft")
    names = set(diffusers.tensors)
    module = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    assert f"{module}.lora_A.weight" in names and f"{module}.lora_B.weight" in names
    assert all(n.startswith("unet.") for n in names)
    assert all(
        n.startswith("base_model.model.down_blocks.") or n.startswith("base_model.model.")
        for n in peft.tensors
    )
    with mtk.open(lora) as f, pytest.raises(mtk.ModelToolkitError, match="unknown LoRA format"):
        lora_convert(f, "comfy")


def test_resize_and_extract_refuse_what_they_cannot_make(tmp_path):
    save_file(
        {
            "lora_unet_x.hada_w1_a": torch.zeros(4, 2),
            "lora_unet_x.hada_w1_b": torch.zeros(2, 4),
            "lora_unet_x.hada_w2_a": torch.zeros(4, 2),
            "lora_unet_x.hada_w2_b": torch.zeros(2, 4),
        },
        str(tmp_path / "loha.safetensors"),
    )
    result = run_mtk("lora", "resize", tmp_path / "loha.safetensors", "--rank", "1")
    assert result.returncode == 2 and "is LoHa; resize keeps LoRA and LoCon" in result.stderr
    same = write_sparse_safetensors(tmp_path / "a.safetensors", SD1)
    result = run_mtk("lora", "extract", same, same, "-o", tmp_path / "never.safetensors")
    assert result.returncode == 2 and "do not differ" in result.stderr
    half = write_sparse_safetensors(tmp_path / "b.safetensors", SD1, "F32")  # other bytes
    result = run_mtk("lora", "extract", half, same, "-o", tmp_path / "never.safetensors")
    assert result.returncode == 2 and "do not differ" in result.stderr  # the same values
    result = run_mtk("lora", "extract", same, same, "--dynamic", "sv-fro", "2")
    assert result.returncode == 2 and "needs a value in (0, 1]" in result.stderr
    assert not (tmp_path / "never.safetensors").exists()


def test_the_randomized_svd_is_as_close_as_the_full_one():
    """A decaying spectrum with noise, as a fine-tune's change has: the randomized factors'
    error is the full SVD's (torch's), to a thousandth."""
    from model_toolkit.lora.svd import factorize

    rng = np.random.default_rng(3)
    decay = np.exp(-np.arange(96) / 12)[:, None]
    change = rng.standard_normal((900, 96)) @ (rng.standard_normal((96, 640)) * decay)
    change = (change + 0.01 * rng.standard_normal((900, 640))).astype(np.float32)
    fast, full = factorize(change, 16, None), factorize(change, 16, None, exact=True)
    s = torch.linalg.svdvals(torch.from_numpy(change))
    best = float(s[16:].norm())
    assert np.linalg.norm(full.up @ full.down - change) == pytest.approx(best, rel=1e-4)
    assert np.linalg.norm(fast.up @ fast.down - change) <= best * 1.001
    assert fast.down.shape == (16, 640) and fast.kept == pytest.approx(full.kept, rel=1e-4)
