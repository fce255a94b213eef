"""`mtk merge`: AUTOMATIC1111's checkpoint-merger modes, streamed, with torch as the oracle
(its merger's formulas in float32: `a * (1 - alpha) + b * alpha`, `a + (b - c) * alpha`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import model_toolkit as mtk
from conftest import key_list, run_mtk, write_sparse_safetensors
from model_toolkit.operations import merge

SD1 = key_list("Checkpoint-SD1-LDM")
FILLED = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "first_stage_model.encoder.conv_in.weight",
    "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
]


def sd1(path, seed, entries=SD1):
    """A real-shaped SD-v1 fp16 checkpoint: a few tensors with random values, holes elsewhere."""
    shapes = dict(entries)
    generator = torch.Generator().manual_seed(seed)
    fill = {}
    for name in FILLED:
        values = torch.randn(shapes[name], generator=generator).to(torch.float16)
        fill[name] = (values.view(torch.int16).numpy(), "F16")
    return write_sparse_safetensors(path, entries, "F16", fill=fill)


def test_weighted_sum_is_a_times_one_minus_alpha_plus_b_times_alpha(tmp_path):
    a, b = sd1(tmp_path / "a.safetensors", 1), sd1(tmp_path / "b.safetensors", 2)
    result = run_mtk("merge", a, b, "--alpha", "0.3", "-o", tmp_path / "m.safetensors")
    assert result.returncode == 0, result.stderr
    ours, ta, tb = (load_file(str(p)) for p in (tmp_path / "m.safetensors", a, b))
    assert ours.keys() == ta.keys()
    for name in FILLED:
        expected = (ta[name].float() * (1 - 0.3) + tb[name].float() * 0.3).to(torch.float16)
        assert ours[name].dtype == torch.float16 and torch.equal(ours[name], expected), name
    recipe = json.loads(mtk.open(tmp_path / "m.safetensors").metadata["sd_merge_recipe"])
    assert recipe["interp_method"] == "Weighted sum" and recipe["multiplier"] == 0.3
    models = json.loads(mtk.open(tmp_path / "m.safetensors").metadata["sd_merge_models"])
    assert [m["name"] for m in models.values()] == ["a.safetensors", "b.safetensors"]


def test_an_alpha_per_class_keeps_a_vae_as_it_was(tmp_path):
    a, b = sd1(tmp_path / "a.safetensors", 1), sd1(tmp_path / "b.safetensors", 2)
    with mtk.open(a) as ma, mtk.open(b) as mb:
        plan = merge(ma, mb, alpha=0.5, alphas={"VAE-v1": 0.0, "CLIP-v1": 1.0})
        out = mtk.write_plan(plan, tmp_path / "m.safetensors")
    ours, ta, tb = (load_file(str(p)) for p in (out, a, b))
    vae, clip, unet = FILLED[1], FILLED[2], FILLED[0]
    assert torch.equal(ours[vae], ta[vae])
    assert torch.equal(ours[clip], (ta[clip].float() * 0.0 + tb[clip].float() * 1.0).half())
    assert torch.equal(ours[unet], (ta[unet].float() * 0.5 + tb[unet].float() * 0.5).half())


def test_add_difference_makes_an_inpainting_model_from_a_custom_one(tmp_path):
    """A = an inpainting model (9 input channels), B = a fine-tune, C = its base: A + (B - C);
    the first layer's first 4 channels merged, the mask channels kept (as the webui's merger)."""
    inpainting = [(n, (320, 9, 3, 3) if n == FILLED[0] else s) for n, s in SD1]
    a = sd1(tmp_path / "inpainting.safetensors", 1, inpainting)
    b, c = sd1(tmp_path / "custom.safetensors", 2), sd1(tmp_path / "base.safetensors", 3)
    result = run_mtk(
        "merge",
        a,
        b,
        c,
        "--mode",
        "add-difference",
        "--alpha",
        "1",
        "-o",
        tmp_path / "m.safetensors",
    )
    assert result.returncode == 0, result.stderr
    ours, ta, tb, tc = (load_file(str(p)) for p in (tmp_path / "m.safetensors", a, b, c))
    first = FILLED[0]
    expected = ta[first].float().clone()
    expected[:, :4] = ta[first].float()[:, :4] + (tb[first].float() - tc[first].float()) * 1.0
    assert ours[first].shape == (320, 9, 3, 3) and torch.equal(ours[first], expected.half())
    other = FILLED[1]
    assert torch.equal(
        ours[other], (ta[other].float() + (tb[other].float() - tc[other].float())).half()
    )
    recipe = json.loads(mtk.open(tmp_path / "m.safetensors").metadata["sd_merge_recipe"])
    assert recipe["is_inpainting"] is True and recipe["interp_method"] == "Add difference"


def test_models_of_different_architectures_are_refused_with_what_differs(tmp_path):
    a = sd1(tmp_path / "a.safetensors", 1)
    xl = write_sparse_safetensors(tmp_path / "xl.safetensors", key_list("Checkpoint-SDXL-SGM"))
    result = run_mtk("merge", a, xl, "-o", tmp_path / "m.safetensors")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "a.safetensors is SD-v1, xl.safetensors is SD-XL" in result.stderr
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize(("mode", "count"), [("add-difference", 2), ("weighted-sum", 3)])
def test_each_mode_takes_its_number_of_models(tmp_path, mode, count):
    paths = [sd1(tmp_path / f"{i}.safetensors", i) for i in range(count)]
    result = run_mtk("merge", *paths, "--mode", mode, "-o", tmp_path / "m.safetensors")
    assert result.returncode == 2 and "merges" in result.stderr


def test_a_merge_reads_as_few_bytes_at_once_as_a_prune(tmp_path):
    """Chunk by chunk from each input: the peak memory does not grow with the models."""
    from conftest import PRINT_PEAK_RSS_KIB, run_python

    a, b = sd1(tmp_path / "a.safetensors", 1), sd1(tmp_path / "b.safetensors", 2)
    script = (
        "import sys, model_toolkit as m\n"
        "from model_toolkit.operations import merge\n"
        "with m.open(sys.argv[1]) as a, m.open(sys.argv[2]) as b:\n"
        "    m.write_plan(merge(a, b, alpha=0.25), sys.argv[3])\n" + PRINT_PEAK_RSS_KIB
    )
    peak_kib = int(run_python(script, a, b, tmp_path / "m.safetensors"))
    assert peak_kib < 400 * 1024  # the inputs are 2 GB each


@pytest.mark.parametrize("mode", ["weighted-sum", "add-difference"])
def test_the_compiled_loop_and_numpy_give_the_same_bits(tmp_path, monkeypatch, mode):
    """bf16 A, fp16 B, fp32 C: the compiled loop reads each as it is; numpy converts first."""
    import importlib

    from model_toolkit.architectures import keylists

    merging = importlib.import_module("model_toolkit.operations.merge")  # the module

    vae = keylists.load("VAE-v1-SD")
    name = "encoder.conv_in.weight"
    paths = []
    for index, (dtype, torch_dtype) in enumerate(
        [("BF16", torch.bfloat16), ("F16", torch.float16), ("F32", torch.float32)]
    ):
        values = torch.randn(dict(vae)[name], generator=torch.Generator().manual_seed(index))
        raw = values.to(torch_dtype).view({2: torch.int16, 4: torch.int32}[torch_dtype.itemsize])
        fill = {name: (raw.numpy(), dtype)}
        paths.append(write_sparse_safetensors(tmp_path / f"{index}.safetensors", vae, dtype, fill))
    count = 3 if mode == "add-difference" else 2
    results = []
    for kernels in (merging._kernels, None):
        monkeypatch.setattr(merging, "_kernels", kernels)
        opened = [mtk.open(p) for p in paths[:count]]
        plan = merge(*opened, mode=mode, alpha=0.37, precision=mtk.precision_dtype("fp32"))
        results.append(mtk.read_all(plan.tensors[name]))
        for model in opened:
            model.close()
    assert np.array_equal(results[0].view(np.uint32), results[1].view(np.uint32))


def test_models_no_architecture_matches_are_merged_by_name(tmp_path):
    from safetensors.torch import save_file

    for index in range(2):
        tensors = {"w": torch.full((4, 4), float(index + 1)), "steps": torch.tensor([index])}
        save_file(tensors, str(tmp_path / f"{index}.safetensors"))
    result = run_mtk(
        "merge",
        tmp_path / "0.safetensors",
        tmp_path / "1.safetensors",
        "-o",
        tmp_path / "m.safetensors",
    )
    assert result.returncode == 0, result.stderr
    merged = load_file(str(tmp_path / "m.safetensors"))
    assert torch.equal(merged["w"], torch.full((4, 4), 1.5)) and merged["steps"].item() == 0
