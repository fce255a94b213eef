"""SD3/SD3.5, Flux, their 16-channel VAE and text encoders, SDXL inpainting: identified from
real key lists (tests/data/keys, package data), and the operations on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import model_toolkit as mtk
from conftest import as_bytes, key_list, run_mtk, shapes_of, with_prefix, write_sparse_safetensors
from model_toolkit.architectures import keylists
from model_toolkit.architectures.detect import detect
from model_toolkit.architectures.keylists import load_path
from model_toolkit.operations import build, extract, prune

SD3_AIO = key_list("Checkpoint-SD3-medium-ComfyUI-AIO")
FLUX_AIO = key_list("Checkpoint-Flux-dev-ComfyUI-AIO")
SDXL = key_list("Checkpoint-SDXL-SGM")
T5 = "text_encoders.t5xxl."


def without(entries, *prefixes):
    return [(n, s) for n, s in entries if not n.startswith(prefixes)]


CASES = {
    "SD3 all-in-one": (
        SD3_AIO,
        "SD-v3",
        ["MMDiT-v3-Medium", "VAE-v3-SD", "CLIP-L-SD", "CLIP-G-SD", "T5-XXL-SD"],
    ),
    "SD3 with CLIPs": (
        without(SD3_AIO, T5),
        "SD-v3",
        ["MMDiT-v3-Medium", "VAE-v3-SD", "CLIP-L-SD", "CLIP-G-SD"],
    ),
    "SD3 bare": (without(SD3_AIO, "text_encoders."), "SD-v3", ["MMDiT-v3-Medium", "VAE-v3-SD"]),
    "SD3.5 large": (
        with_prefix(keylists.load("MMDiT-v3.5-Large"), "model.diffusion_model.")
        + with_prefix(keylists.load("VAE-v3-SD"), "first_stage_model."),
        "SD-v3.5-Large",
        ["MMDiT-v3.5-Large", "VAE-v3-SD"],
    ),
    "SD3.5 medium": (
        with_prefix(keylists.load("MMDiT-v3.5-Medium"), "model.diffusion_model.")
        + with_prefix(keylists.load("VAE-v3-SD"), "first_stage_model."),
        "SD-v3.5-Medium",
        ["MMDiT-v3.5-Medium", "VAE-v3-SD"],
    ),
    "Flux dev all-in-one": (
        FLUX_AIO,
        "Flux-v1-Dev",
        ["Flux-v1-Dev", "VAE-v3-Flux", "CLIP-L-SD", "T5-XXL-SD"],
    ),
    "Flux dev without T5": (
        without(FLUX_AIO, T5),
        "Flux-v1-Dev",
        ["Flux-v1-Dev", "VAE-v3-Flux", "CLIP-L-SD"],
    ),
    "Flux schnell all-in-one": (
        without(FLUX_AIO, "model.diffusion_model.guidance_in."),
        "Flux-v1-Schnell",
        ["Flux-v1-Schnell", "VAE-v3-Flux", "CLIP-L-SD", "T5-XXL-SD"],
    ),
    "Flux canny/depth all-in-one (128 input channels)": (
        [
            (n, (3072, 128) if n == "model.diffusion_model.img_in.weight" else s)
            for n, s in FLUX_AIO
        ],
        "Flux-v1-Control",
        ["Flux-v1-Control", "VAE-v3-Flux", "CLIP-L-SD", "T5-XXL-SD"],
    ),
    "Flux dev (BFL)": (keylists.load("Flux-v1-Dev"), "Flux-v1", ["Flux-v1-Dev"]),
    "Flux schnell (BFL)": (keylists.load("Flux-v1-Schnell"), "Flux-v1", ["Flux-v1-Schnell"]),
    "Flux fill (BFL)": (keylists.load("Flux-v1-Fill"), "Flux-v1", ["Flux-v1-Fill"]),
    "MMDiT 3.5 large": (
        keylists.load("MMDiT-v3.5-Large"),
        "MMDiT-v3.5-Large",
        ["MMDiT-v3.5-Large"],
    ),
    "16-channel VAE (ae.safetensors)": (keylists.load("VAE-v3-SD"), "VAE-v3", ["VAE-v3-SD"]),
    "clip_l.safetensors": (keylists.load("CLIP-L-SD"), "CLIP-L", ["CLIP-L-SD"]),
    "clip_g.safetensors": (keylists.load("CLIP-G-SD"), "CLIP-G", ["CLIP-G-SD"]),
    "t5xxl_fp16.safetensors": (keylists.load("T5-XXL-SD"), "T5-XXL", ["T5-XXL-SD"]),
    "SDXL inpainting": (
        [
            (n, (320, 9, 3, 3) if n == "model.diffusion_model.input_blocks.0.0.weight" else s)
            for n, s in SDXL
        ],
        "SD-XL",
        ["UNET-XL-Inpainting", "VAE-v1-SD", "CLIP-XL-SD", "CLIP-XL-AUX-SD"],
    ),
}


EXTRA = Path(__file__).parent / "data" / "keys" / "extra"
ADAPTERS = {
    "ControlNet-v1-diffusers": ("ControlNet-v1", "ControlNet-v1-Diffusers"),
    "ControlNet-XL-diffusers": ("ControlNet-XL", "ControlNet-XL-Diffusers"),
    "ControlNet-Flux-InstantX-Union-real": ("ControlNet-Flux", "ControlNet-Flux-InstantX"),
    "ControlNet-Flux-XLabs-real": ("ControlNet-Flux", "ControlNet-Flux-XLabs"),
    "T2IAdapter-v1-diffusers": ("T2I-Adapter-v1", "T2I-Adapter-v1-Diffusers"),
    "T2IAdapter-XL-diffusers": ("T2I-Adapter-XL", "T2I-Adapter-XL-Diffusers"),
    "T2IAdapter-v1-TencentARC": ("T2I-Adapter-v1", "T2I-Adapter-v1-TencentARC"),
}


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_controlnets_and_adapters(name):
    arch, component = ADAPTERS[name]
    detection = detect(shapes_of(load_path(EXTRA / f"{name}.txt")))
    assert (detection.resolved, list(detection.found)) == (arch, [arch])
    assert list(detection.components.values()) == [component]


def test_a_grayscale_t2i_adapter_has_fewer_input_channels():
    entries = load_path(EXTRA / "T2IAdapter-XL-diffusers.txt")
    gray = [(n, (320, 256, 3, 3) if n == "adapter.conv_in.weight" else s) for n, s in entries]
    detection = detect(shapes_of(gray))
    assert detection.components == {"T2I-Adapter-XL": "T2I-Adapter-XL-Diffusers-Gray"}


@pytest.mark.parametrize("case", list(CASES))
def test_identified_with_their_components(case):
    entries, arch, components = CASES[case]
    detection = detect(shapes_of(entries))
    assert detection.resolved == arch
    assert sorted(detection.components.values()) == sorted(components)
    assert list(detection.found) == [arch]


def test_an_sdxl_file_missing_one_clip_layer_is_rejected_with_the_reason():
    layer = "conditioner.embedders.1.model.transformer.resblocks.31."
    detection = detect(shapes_of(without(SDXL, layer)))
    assert detection.resolved != "SD-XL"
    reasons = {r.name: r for r in detection.rejected}
    assert reasons["CLIP-XL-SD"].reason == "Missing required keys (12 of 390)"
    assert any(line.startswith(layer) for line in reasons["CLIP-XL-SD"].missing)
    assert reasons["SD-XL"].reason == "Missing required classes"
    assert reasons["SD-XL"].missing == ["CLIP-XL"]


def test_a_flux_transformer_with_one_block_removed_is_rejected_with_the_reason():
    entries = without(keylists.load("Flux-v1-Dev"), "single_blocks.37.")
    detection = detect(shapes_of(entries))
    assert detection.resolved is None
    reasons = {r.name: r for r in detection.rejected}
    assert reasons["Flux-v1-Dev"].reason.startswith("Missing required keys (")
    assert all("single_blocks.37." in line for line in reasons["Flux-v1-Dev"].missing)


def test_flux_architecture_names_in_the_report(tmp_path):
    path = write_sparse_safetensors(tmp_path / "flux.safetensors", FLUX_AIO, "BF16")
    with mtk.open(path) as model:
        from model_toolkit.report import Findings, basic_report

        text = basic_report(mtk.analyze(model), Findings())
    assert "Model type identified as Flux-v1-Dev." in text
    assert "Model components are: Flux-v1-Dev, VAE-v3-Flux, CLIP-L-SD, T5-XXL-SD." in text


# -- operations on the new families (SD3 medium: the smallest, ~6 GB listed, holes on disk) --


@pytest.fixture(scope="module")
def sd3_file(tmp_path_factory):
    """SD3 medium all-in-one, fp16, with random values in a tensor of each part."""
    rng = np.random.default_rng(5)
    picks = [
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
        "first_stage_model.decoder.conv_in.weight",
        "text_encoders.clip_g.transformer.text_model.final_layer_norm.weight",
        "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight",
    ]
    shapes = dict(SD3_AIO)
    fill = {name: rng.standard_normal(shapes[name]).astype(np.float16) for name in picks}
    path = tmp_path_factory.mktemp("sd3") / "sd3_medium.safetensors"
    return write_sparse_safetensors(path, SD3_AIO, "F16", fill), fill


def test_prune_drops_t5_only_when_asked(sd3_file, tmp_path):
    path, fill = sd3_file
    out = tmp_path / "sd3-no-t5.safetensors"
    with mtk.open(path) as model:
        assert any(e.name.startswith(T5) for e in prune(model, None).entries)  # kept by default
        mtk.write_plan(prune(model, None, drop=("T5-XXL",)), out)
    with safe_open(out, "np") as handle:
        names = list(handle.keys())
        assert not any(n.startswith(T5) for n in names)  # its logit_scale went with it
        assert len(names) == len(without(SD3_AIO, T5))
        for name, values in fill.items():
            assert np.array_equal(handle.get_tensor(name), values), name
    with mtk.open(out) as model:
        analysis = mtk.analyze(model)
        assert analysis.architecture == "SD-v3" and "T5-XXL" not in analysis.components
    with mtk.open(path) as model, pytest.raises(mtk.UsageError, match="cannot do without VAE-v3"):
        prune(model, drop=("VAE-v3",))


def test_the_16_channel_vae_to_fp8(tmp_path):
    vae = keylists.load("VAE-v3-SD")
    values = np.random.default_rng(2).standard_normal(dict(vae)["decoder.conv_in.weight"])
    fill = {"decoder.conv_in.weight": values.astype(np.float32)}
    path = write_sparse_safetensors(tmp_path / "ae.safetensors", vae, "F32", fill)
    out = tmp_path / "ae-fp8.safetensors"
    with mtk.open(path) as model:
        mtk.write_plan(prune(model, mtk.precision_dtype("fp8_e4m3fn")), out)
    with safe_open(out, "pt") as handle:
        got = handle.get_tensor("decoder.conv_in.weight")
        assert got.dtype == torch.float8_e4m3fn
        expected = torch.from_numpy(fill["decoder.conv_in.weight"]).to(torch.float8_e4m3fn)
        assert as_bytes(got) == as_bytes(expected)
    with mtk.open(out) as model:
        assert mtk.analyze(model).architecture == "VAE-v3"


def test_extract_then_build_an_sd3_file_from_its_parts(sd3_file, tmp_path):
    path, fill = sd3_file
    parts = {}
    with mtk.open(path) as model:
        for cls in ("MMDiT-v3", "VAE-v3", "CLIP-L", "CLIP-G"):
            parts[cls] = tmp_path / f"{cls}.safetensors"
            mtk.write_plan(extract(model, cls), parts[cls])
    for cls, part in parts.items():
        with mtk.open(part) as model:
            assert mtk.analyze(model).architecture == cls  # a standalone component file
    built = tmp_path / "built.safetensors"
    opened = {cls: mtk.open(p) for cls, p in parts.items()}
    try:
        plan = build("SD-v3", [(cls, model, None) for cls, model in opened.items()])
        mtk.write_plan(plan, built)
    finally:
        for model in opened.values():
            model.close()
    with mtk.open(built) as model:
        analysis = mtk.analyze(model)
        assert analysis.architecture == "SD-v3"
        assert set(analysis.components) == {"MMDiT-v3", "VAE-v3", "CLIP-L", "CLIP-G"}
    with safe_open(built, "np") as handle:
        for name, values in fill.items():
            assert np.array_equal(handle.get_tensor(name), values), name


# -- hints: what keys cannot decide ----------------------------------------------------------


def sd2_entries():
    from model_toolkit.architectures.registry import load_registry

    components = load_registry().components
    entries = []
    for name in ("UNET-v2-SD", "VAE-v1-SD", "CLIP-v2-SD"):
        entries += with_prefix(sorted(components[name].keys), components[name].prefix)
    return entries


@pytest.mark.parametrize(("std", "expected"), [(0.2, "v-prediction"), (0.02, "epsilon")])
def test_sd2_prediction_is_a_hint_from_one_bias(tmp_path, std, expected):
    from model_toolkit.hints import SD2_VPRED_KEY, data_hints, header_hints

    values = np.random.default_rng(1).standard_normal(320).astype(np.float32) * std
    path = write_sparse_safetensors(
        tmp_path / "sd2.safetensors",
        sd2_entries(),
        "F16",
        {SD2_VPRED_KEY: values.astype(np.float16)},
    )
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
        assert analysis.architecture == "SD-v2"
        [hint] = data_hints(analysis)
        assert (hint.topic, hint.value) == ("prediction", expected)
        assert "threshold 0.09, as ComfyUI reads it" in hint.evidence
        assert header_hints(analysis, {"global_step": 875000})[0].value == "epsilon"


def test_sdxl_markers_and_metadata_are_hints_and_prune_keeps_the_markers(tmp_path):
    from safetensors.numpy import save_file

    from model_toolkit.hints import header_hints

    entries = SDXL + [("v_pred", (0,)), ("ztsnr", (0,))]
    path = write_sparse_safetensors(tmp_path / "noob.safetensors", entries, "F16")
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
        assert analysis.architecture == "SD-XL" and analysis.unknown_keys == []
        assert [h.value for h in header_hints(analysis, {})] == [
            "v-prediction",
            "zero terminal SNR",
        ]
        kept = {e.name for e in prune(model).entries}
    assert {"v_pred", "ztsnr"} <= kept
    lora = tmp_path / "lora.safetensors"
    save_file(
        {"x": np.zeros(1, np.float32)}, str(lora), {"ss_base_model_version": "sdxl_base_v1-0"}
    )
    with mtk.open(lora) as model:
        [hint] = header_hints(mtk.analyze(model), model.metadata)
    assert hint.text() == (
        "training metadata: ss_base_model_version = sdxl_base_v1-0 (written by the trainer)"
    )


def test_flux_variant_hint_in_the_report(tmp_path):
    path = write_sparse_safetensors(tmp_path / "flux.safetensors", FLUX_AIO, "BF16")
    result = run_mtk("inspect", path, "--no-metric")
    assert "Hint, variant: dev-like (guidance distilled) (guidance_in is present)." in result.stdout


# -- diffusers folders ------------------------------------------------------------------------


def write_component(folder, entries, shards=1, variant=""):
    """A diffusers component subfolder, its weights split into `shards` files."""
    folder.mkdir(parents=True)
    base = "diffusion_pytorch_model" if "text_encoder" not in folder.name else "model"
    size = -(-len(entries) // shards)
    for index in range(shards):
        part = entries[index * size : (index + 1) * size]
        suffix = f"-{index + 1:05d}-of-{shards:05d}" if shards > 1 else ""
        write_sparse_safetensors(folder / f"{base}{suffix}{variant}.safetensors", part, "F16")


def test_a_diffusers_folder_is_identified_part_by_part(tmp_path):
    import json

    root = tmp_path / "sdxl"
    root.mkdir()
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    write_component(root / "unet", load_path(EXTRA / "UNET-XL-diffusers.txt"), shards=2)
    write_component(root / "vae", load_path(EXTRA / "VAE-v1-diffusers.txt"), variant=".fp16")
    write_component(root / "text_encoder", load_path(EXTRA / "CLIP-L.txt"))
    write_component(root / "text_encoder_2", load_path(EXTRA / "CLIP-G-HF.txt"))
    (root / "scheduler").mkdir()
    result = run_mtk("inspect", root, "--json")
    assert result.returncode == 0, result.stderr
    parts = {p["folder"]: p for p in json.loads(result.stdout)["parts"]}
    assert {name: p["components"] for name, p in parts.items()} == {
        "text_encoder": {"CLIP-L": "CLIP-L-SD"},
        "text_encoder_2": {"CLIP-G": "CLIP-G-SD"},
        "unet": {"UNET-XL": "UNET-XL-Diffusers"},
        "vae": {"VAE-v1": "VAE-v1-Diffusers"},
    }
    assert all(p["unknown_keys"] == 0 for p in parts.values())


@pytest.mark.parametrize(
    ("name", "arch", "component"),
    [
        ("Flux-dev-transformer-diffusers", "Flux-v1", "Flux-v1-Dev-Diffusers"),
        ("VAE-16ch-diffusers", "VAE-v3", "VAE-v3-Diffusers"),
        ("UNET-v2-diffusers", "UNET-v2", "UNET-v2-Diffusers"),
        ("CLIP-H-HF-SD2", "CLIP-v2", "CLIP-v2-HF"),
        ("T5XXL-encoder", "T5-XXL", "T5-XXL-SD"),
    ],
)
def test_diffusers_components(name, arch, component):
    detection = detect(shapes_of(load_path(EXTRA / f"{name}.txt")))
    assert (detection.resolved, list(detection.found)) == (arch, [arch])
    assert list(detection.components.values()) == [component]


def test_new_classes_get_fingerprints_that_ignore_the_float_width(tmp_path):
    from model_toolkit.fingerprints import class_fingerprints
    from model_toolkit.metric import compute_metric

    vae = keylists.load("VAE-v3-SD")
    shape = dict(vae)["decoder.conv_in.weight"]
    values = np.random.default_rng(3).standard_normal(shape).astype(np.float32)

    def prints(name, dtype, array):
        path = write_sparse_safetensors(
            tmp_path / name, vae, dtype, {"decoder.conv_in.weight": array}
        )
        with mtk.open(path) as model:
            analysis = mtk.analyze(model)
            assert compute_metric(analysis).string == "----/----/----"  # the original's parts
            return class_fingerprints(analysis)

    wide = prints("fp32.safetensors", "F32", values)
    assert set(wide) == {"VAE-v3"} and wide["VAE-v3"] != "0000"
    assert prints("fp16.safetensors", "F16", values.astype(np.float16)) == wide
    assert prints("other.safetensors", "F32", values * 0.5) != wide


def test_replace_the_vae_of_an_sd3_file(tmp_path):
    from model_toolkit.operations import replace

    bare = without(SD3_AIO, "text_encoders.")
    vae_key = "first_stage_model.decoder.conv_in.weight"
    source = write_sparse_safetensors(tmp_path / "sd3.safetensors", bare, "F16")
    vae = keylists.load("VAE-v3-SD")
    values = np.random.default_rng(9).standard_normal(dict(vae)["decoder.conv_in.weight"])
    donor = write_sparse_safetensors(
        tmp_path / "ae.safetensors",
        vae,
        "F32",
        {"decoder.conv_in.weight": values.astype(np.float32)},
    )
    out = tmp_path / "sd3-new-vae.safetensors"
    with mtk.open(source) as model, mtk.open(donor) as other:
        mtk.write_plan(replace(model, "VAE-v3", other, None, mtk.precision_dtype("fp16")), out)
    with safe_open(out, "np") as handle:
        assert np.array_equal(
            handle.get_tensor(vae_key), values.astype(np.float32).astype(np.float16)
        )
        assert len(list(handle.keys())) == len(bare)
    with mtk.open(out) as model:
        assert mtk.analyze(model).components["VAE-v3"] == "VAE-v3-SD"


def renamed_prefix(entries, old, new):
    return [(new + n[len(old) :] if n.startswith(old) else n, s) for n, s in entries]


@pytest.mark.parametrize(
    ("target", "donor_prefix", "slot"),
    [
        ("flux", "first_stage_model.", "vae."),  # an SD3 file's VAE into a Flux
        ("sd3", "vae.", "first_stage_model."),  # a Flux file's VAE into an SD3
    ],
)
def test_a_replaced_part_takes_the_slot_the_target_uses(tmp_path, target, donor_prefix, slot):
    """ComfyUI looks for a Flux VAE under vae. and an SD3 VAE under first_stage_model."""
    from model_toolkit.operations import replace

    flux = without(FLUX_AIO, "text_encoders.")
    sd3 = without(SD3_AIO, "text_encoders.")
    model_entries = flux if target == "flux" else sd3
    donor_entries = renamed_prefix(sd3 if target == "flux" else flux, "vae.", "first_stage_model.")
    donor_entries = renamed_prefix(donor_entries, "first_stage_model.", donor_prefix)
    source = write_sparse_safetensors(tmp_path / "model.safetensors", model_entries, "BF16")
    donor = write_sparse_safetensors(tmp_path / "donor.safetensors", donor_entries, "BF16")
    out = tmp_path / "out.safetensors"
    with mtk.open(source) as model, mtk.open(donor) as other:
        mtk.write_plan(replace(model, "VAE-v3", other), out)
    with safe_open(out, "np") as handle:
        names = list(handle.keys())
    assert f"{slot}decoder.conv_in.weight" in names
    assert not any(n.startswith(donor_prefix) for n in names if slot != donor_prefix)
    assert len(names) == len(model_entries)


def test_a_flux_vae_in_the_wrong_slot_is_reported_and_pruning_moves_it(tmp_path):
    misplaced = renamed_prefix(without(FLUX_AIO, "text_encoders."), "vae.", "first_stage_model.")
    source = write_sparse_safetensors(tmp_path / "flux.safetensors", misplaced, "BF16")
    with mtk.open(source) as model:
        analysis = mtk.analyze(model)
        assert analysis.architecture == "Flux-v1-Dev"
        assert analysis.misplaced == {"VAE-v3": ("first_stage_model.", "vae.")}
        from model_toolkit.report import Findings, basic_report

        assert "VAE-v3 is under first_stage_model. where Flux-v1-Dev files keep it under vae." in (
            basic_report(analysis, Findings())
        )
        plan = prune(model)
    names = {entry.name for entry in plan.entries}
    assert "vae.decoder.conv_in.weight" in names
    assert not any(n.startswith("first_stage_model.") for n in names)


def test_an_sdxl_base_given_a_bare_big_clip_puts_it_in_the_base_slot(tmp_path):
    from model_toolkit.operations import replace

    source = write_sparse_safetensors(tmp_path / "sdxl.safetensors", SDXL, "F16")
    donor = write_sparse_safetensors(
        tmp_path / "clip-g.safetensors", keylists.load("CLIP-XL-SD"), "F16"
    )
    with mtk.open(source) as model, mtk.open(donor) as other:
        plan = replace(model, "CLIP-XL", other)
    names = {entry.name for entry in plan.entries}
    assert names == {name for name, _ in SDXL}


def test_extracted_text_encoders_are_named_by_class_and_a_bare_unet_keeps_the_markers(tmp_path):

    from model_toolkit.filenames import component_suffix

    assert [component_suffix(c) for c in ("CLIP-XL", "CLIP-XL-AUX", "T5-XXL", "CLIP-v1")] == [
        "clip_g",
        "clip_l",
        "t5xxl",
        "clip",
    ]
    entries = [*SDXL, ("v_pred", ()), ("ztsnr", ())]
    source = write_sparse_safetensors(tmp_path / "noob.safetensors", entries, "F16")
    with mtk.open(source) as model:
        plan = extract(model, "UNET-XL")
    assert plan.metadata["modelspec.prediction_type"] == "v"
    assert plan.metadata["modeltoolkit.markers"] == "v_pred, ztsnr"
    out = tmp_path / "pruned.safetensors"
    result = run_mtk("prune", source, "-o", out, "--modelspec")
    assert result.returncode == 0, result.stderr
    with safe_open(out, "np") as handle:
        assert handle.metadata()["modelspec.prediction_type"] == "v"


def test_a_replaced_part_follows_the_models_precision_unless_asked(tmp_path):
    from model_toolkit.operations import replace

    bare = without(SD3_AIO, "text_encoders.")
    source = write_sparse_safetensors(tmp_path / "sd3.safetensors", bare, "F16")
    donor = write_sparse_safetensors(tmp_path / "ae.safetensors", keylists.load("VAE-v3-SD"), "F32")
    with mtk.open(source) as model, mtk.open(donor) as other:
        followed = replace(model, "VAE-v3", other)
        asked = replace(model, "VAE-v3", other, None, mtk.precision_dtype("fp32"))
    assert {e.dtype.name for e in followed.entries if e.dtype.is_float} == {"F16"}
    vae = [e for e in asked.entries if e.name.startswith("first_stage_model.")]
    assert {e.dtype.name for e in vae} == {"F32"}


@pytest.mark.parametrize(
    ("cls", "expected"), [("CLIP-XL-AUX", "CLIP-L-SD"), ("CLIP-XL", "CLIP-XL-SD")]
)
def test_sdxl_text_encoders_come_out_as_their_loaders_name_them(tmp_path, cls, expected):
    """CLIP-L keys start with `text_model.` (ComfyUI's detect_te_model looks for
    `text_model.encoder.layers.0.mlp.fc1.weight`); bigG keeps OpenCLIP's names, which
    ComfyUI converts itself."""
    source = write_sparse_safetensors(tmp_path / "sdxl.safetensors", SDXL, "F16")
    with mtk.open(source) as model:
        plan = extract(model, cls)
    names = {entry.name for entry in plan.entries}
    spec = keylists.load(expected)
    assert names == {name for name, _ in spec} - {"text_projection.weight"}
    if cls == "CLIP-XL-AUX":
        assert "text_model.encoder.layers.0.mlp.fc1.weight" in names
