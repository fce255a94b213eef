"""The image families of 2025-2026 (FLUX.2, Chroma, Z-Image, Qwen-Image), their VAEs and text
encoders: identified as bare files (ComfyUI's diffusion_models/, vae/, text_encoders/), in
diffusers naming, and as all-in-one checkpoints; operated on like any other model.

Fixtures are sparse files built from the reference key lists (real names and shapes, built from
the reference implementations and cross-checked: tests/data/keys/2026/README.md in the shared
reference, copied into the package's data as they are).
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

import model_toolkit as mtk
from conftest import DATA, key_list, write_sparse_safetensors
from model_toolkit.architectures import keylists
from model_toolkit.operations import extract, prune

DM = "model.diffusion_model."

# file -> ([(prefix, key list)], architecture, {class: component})
CASES = {
    "flux2-dev": ([("", "Flux2-dev-transformer")], "Flux-v2", {"Flux-v2": "Flux-v2-Dev"}),
    "flux2-klein-4b": (
        [("", "Flux2-klein-4B-transformer")],
        "Flux-v2",
        {"Flux-v2": "Flux-v2-Klein-4B"},
    ),
    "flux2-klein-9b": (
        [("", "Flux2-klein-9B-transformer")],
        "Flux-v2",
        {"Flux-v2": "Flux-v2-Klein-9B"},
    ),
    "flux2-klein-9b-diffusers": (
        [("", "Flux2-klein-9B-transformer-diffusers")],
        "Flux-v2",
        {"Flux-v2": "Flux-v2-Klein-9B-Diffusers"},
    ),
    "flux2-klein-4b-aio": (
        [
            (DM, "Flux2-klein-4B-transformer"),
            ("vae.", "VAE-Flux2"),
            ("text_encoders.qwen3_4b.transformer.", "Qwen3-4B"),
        ],
        "Flux-v2-Klein-4B-AIO",
        {"Flux-v2": "Flux-v2-Klein-4B", "VAE-Flux2": "VAE-Flux2", "Qwen3-4B": "Qwen3-4B"},
    ),
    "flux2-dev-aio": (
        [(DM, "Flux2-dev-transformer")],
        "Flux-v2-Dev-AIO",
        {"Flux-v2": "Flux-v2-Dev"},
    ),
    "flux2-vae": ([("", "VAE-Flux2-diffusers")], "VAE-Flux2", {"VAE-Flux2": "VAE-Flux2-Diffusers"}),
    "chroma": ([("", "Chroma-transformer")], "Chroma", {"Chroma": "Chroma"}),
    "chroma-diffusers": (
        [("", "Chroma-transformer-diffusers")],
        "Chroma",
        {"Chroma": "Chroma-Diffusers"},
    ),
    "chroma-aio": (
        [(DM, "Chroma-transformer"), ("vae.", "VAE-v3-SD")],
        "Chroma-AIO",
        {"Chroma": "Chroma", "VAE-v3": "VAE-v3-Flux"},
    ),
    "z-image": ([("", "ZImage-transformer")], "Z-Image", {"Z-Image": "Z-Image"}),
    "z-image-diffusers": (
        [("", "ZImage-transformer-diffusers")],
        "Z-Image",
        {"Z-Image": "Z-Image-Diffusers"},
    ),
    "z-image-aio": (
        [
            (DM, "ZImage-transformer"),
            ("vae.", "VAE-v3-SD"),
            ("text_encoders.qwen3_4b.transformer.", "Qwen3-4B"),
        ],
        "Z-Image-AIO",
        {"Z-Image": "Z-Image", "VAE-v3": "VAE-v3-Flux", "Qwen3-4B": "Qwen3-4B"},
    ),
    "qwen-image": ([("", "QwenImage-transformer")], "Qwen-Image", {"Qwen-Image": "Qwen-Image"}),
    "qwen-image-edit-2511": (
        [("", "QwenImage-Edit-2511-transformer")],
        "Qwen-Image",
        {"Qwen-Image": "Qwen-Image-Edit-2511"},
    ),
    "qwen-image-layered": (
        [("", "QwenImage-Layered-transformer")],
        "Qwen-Image",
        {"Qwen-Image": "Qwen-Image-Layered"},
    ),
    "qwen-image-aio": (
        [
            (DM, "QwenImage-transformer"),
            ("vae.", "VAE-Wan2.1"),
            ("text_encoders.qwen25_7b.transformer.", "Qwen2.5-VL-7B"),
        ],
        "Qwen-Image-AIO",
        {"Qwen-Image": "Qwen-Image", "VAE-Wan2.1": "VAE-Wan2.1", "Qwen2.5-VL-7B": "Qwen2.5-VL-7B"},
    ),
    "qwen-image-vae": ([("", "VAE-Wan2.1")], "VAE-Wan2.1", {"VAE-Wan2.1": "VAE-Wan2.1"}),
    "wan-vae-diffusers": (
        [("", "VAE-Wan2.1-diffusers")],
        "VAE-Wan2.1",
        {"VAE-Wan2.1": "VAE-Wan2.1-Diffusers"},
    ),
    "qwen_2.5_vl_7b": (
        [("", "Qwen2.5-VL-7B")],
        "Qwen2.5-VL-7B",
        {"Qwen2.5-VL-7B": "Qwen2.5-VL-7B"},
    ),
    "qwen_3_4b": ([("", "Qwen3-4B")], "Qwen3-4B", {"Qwen3-4B": "Qwen3-4B"}),
    "qwen_3_8b": ([("", "Qwen3-8B")], "Qwen3-8B", {"Qwen3-8B": "Qwen3-8B"}),
    "wan2.1-t2v-1.3b": ([("", "Wan2.1-T2V-1.3B-transformer")], "Wan", {"Wan": "Wan-v2.1-T2V-1.3B"}),
    "wan2.1-t2v-14b": ([("", "Wan2.1-T2V-14B-transformer")], "Wan", {"Wan": "Wan-v2.1-T2V-14B"}),
    "wan2.2-t2v-a14b-high": (
        [("", "Wan2.2-T2V-A14B-transformer")],
        "Wan",
        {"Wan": "Wan-v2.1-T2V-14B"},
    ),
    "wan2.1-i2v-14b": ([("", "Wan2.1-I2V-14B-transformer")], "Wan", {"Wan": "Wan-v2.1-I2V-14B"}),
    "wan2.1-flf2v-14b": (
        [("", "Wan2.1-FLF2V-14B-transformer")],
        "Wan",
        {"Wan": "Wan-v2.1-FLF2V-14B"},
    ),
    "wan2.2-i2v-a14b": ([("", "Wan2.2-I2V-A14B-transformer")], "Wan", {"Wan": "Wan-v2.2-I2V-A14B"}),
    "wan2.2-ti2v-5b": ([("", "Wan2.2-TI2V-5B-transformer")], "Wan", {"Wan": "Wan-v2.2-TI2V-5B"}),
    "wan2.2-ti2v-5b-diffusers": (
        [("", "Wan2.2-TI2V-5B-transformer-diffusers")],
        "Wan",
        {"Wan": "Wan-v2.2-TI2V-5B-Diffusers"},
    ),
    "wan2.1-i2v-diffusers": (
        [("", "Wan2.1-I2V-14B-transformer-diffusers")],
        "Wan",
        {"Wan": "Wan-v2.1-I2V-14B-Diffusers"},
    ),
    "wan2.2-ti2v-aio": (
        [
            (DM, "Wan2.2-TI2V-5B-transformer"),
            ("vae.", "VAE-Wan2.2"),
            ("text_encoders.umt5xxl.transformer.", "UMT5-XXL-encoder"),
        ],
        "Wan-AIO",
        {"Wan": "Wan-v2.2-TI2V-5B", "VAE-Wan2.2": "VAE-Wan2.2", "UMT5-XXL": "UMT5-XXL"},
    ),
    "wan2.2-vae": ([("", "VAE-Wan2.2")], "VAE-Wan2.2", {"VAE-Wan2.2": "VAE-Wan2.2"}),
    "wan2.2-vae-diffusers": (
        [("", "VAE-Wan2.2-diffusers")],
        "VAE-Wan2.2",
        {"VAE-Wan2.2": "VAE-Wan2.2-Diffusers"},
    ),
    "umt5-xxl": ([("", "UMT5-XXL-encoder")], "UMT5-XXL", {"UMT5-XXL": "UMT5-XXL"}),
    "umt5-xxl-wan": (
        [("", "UMT5-XXL-encoder-Wan-native")],
        "UMT5-XXL",
        {"UMT5-XXL": "UMT5-XXL-Wan"},
    ),
    "hunyuanvideo": (
        [("", "HunyuanVideo-transformer")],
        "HunyuanVideo",
        {"HunyuanVideo": "HunyuanVideo"},
    ),
    "hunyuanvideo-saved": (
        [("model.model.", "HunyuanVideo-transformer"), ("vae.", "VAE-HunyuanVideo")],
        "HunyuanVideo-AIO",
        {"HunyuanVideo": "HunyuanVideo-ComfyUI-Saved", "VAE-HunyuanVideo": "VAE-HunyuanVideo"},
    ),
    "hunyuanvideo-diffusers": (
        [("", "HunyuanVideo-transformer-diffusers")],
        "HunyuanVideo",
        {"HunyuanVideo": "HunyuanVideo-Diffusers"},
    ),
    "hunyuanvideo-vae-diffusers": (
        [("", "VAE-HunyuanVideo-diffusers")],
        "VAE-HunyuanVideo",
        {"VAE-HunyuanVideo": "VAE-HunyuanVideo-Diffusers"},
    ),
    "ltxv-2b": ([("", "LTXV-2B-transformer")], "LTX-Video", {"LTX-Video": "LTX-Video-2B"}),
    "ltxv-13b-aio": (
        [(DM, "LTXV-13B-transformer")],
        "LTX-Video-AIO",
        {"LTX-Video": "LTX-Video-13B"},
    ),
    "ltxv-13b-diffusers": (
        [("", "LTXV-13B-transformer-diffusers")],
        "LTX-Video",
        {"LTX-Video": "LTX-Video-13B-Diffusers"},
    ),
    "ltx-2": ([("", "LTX2-19B-transformer")], "LTX-2", {"LTX-2": "LTX-2-19B"}),
    "ltx-2-diffusers": (
        [("", "LTX2-19B-transformer-diffusers")],
        "LTX-2",
        {"LTX-2": "LTX-2-19B-Diffusers"},
    ),
    "lumina-2": ([("", "Lumina2-transformer")], "Lumina-2", {"Lumina-2": "Lumina-2"}),
    "lumina-2-aio": (
        [
            (DM, "Lumina2-transformer"),
            ("vae.", "VAE-v3-SD"),
            ("text_encoders.gemma2_2b.transformer.", "Gemma2-2B"),
        ],
        "Lumina-2-AIO",
        {"Lumina-2": "Lumina-2", "VAE-v3": "VAE-v3-Flux", "Gemma-2-2B": "Gemma-2-2B"},
    ),
    "lumina-2-diffusers": (
        [("", "Lumina2-transformer-diffusers")],
        "Lumina-2",
        {"Lumina-2": "Lumina-2-Diffusers"},
    ),
    "hidream-i1": ([("", "HiDream-I1-transformer")], "HiDream-I1", {"HiDream-I1": "HiDream-I1"}),
    "anima": ([("", "Anima-transformer")], "Anima", {"Anima": "Anima"}),
    "anima-official": ([("net.", "Anima-transformer")], "Anima-AIO", {"Anima": "Anima-Net"}),
    "gemma-2-2b": ([("", "Gemma2-2B")], "Gemma-2-2B", {"Gemma-2-2B": "Gemma-2-2B"}),
    "llama-3.1-8b": ([("", "Llama3.1-8B")], "Llama-3.1-8B", {"Llama-3.1-8B": "Llama-3.1-8B"}),
}


def reference(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """A list by the name the reference gives it (tests/data/keys/2026; derived/: lists made
    here from them), or a package list."""
    for folder in ("2026", "derived"):
        if (DATA / "keys" / folder / f"{name}.txt").exists():
            return key_list(f"{folder}/{name}")
    return keylists.load(name)


def keys_of(parts: list[tuple[str, str]]) -> list[tuple[str, tuple[int, ...]]]:
    return [(prefix + key, shape) for prefix, name in parts for key, shape in reference(name)]


@pytest.mark.parametrize("name", list(CASES))
def test_each_family_is_identified_with_nothing_left_over(tmp_path, name):
    parts, architecture, components = CASES[name]
    path = write_sparse_safetensors(tmp_path / f"{name}.safetensors", keys_of(parts), "BF16")
    with mtk.open(path) as model:
        analysis = mtk.analyze(model, mtk.precision_dtype("auto"))
    assert analysis.architecture == architecture
    assert analysis.components == components
    assert analysis.unknown_keys == [] and analysis.junk_keys == []
    # bf16 files of these families are what they ship as: nothing to prune or narrow.
    assert analysis.precision.name == "BF16" and analysis.sizes.pruned == analysis.sizes.total


def test_a_wan_transformer_missing_a_block_is_a_near_miss_with_its_reason(tmp_path):
    keys = [
        (k, s) for k, s in reference("Wan2.1-T2V-14B-transformer") if k != "blocks.7.ffn.0.weight"
    ]
    path = write_sparse_safetensors(tmp_path / "wan-cut.safetensors", keys, "BF16")
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture is None
    [miss] = [r for r in analysis.detection.rejected if r.name == "Wan-v2.1-T2V-14B"]
    assert miss.reason == f"Missing required keys (1 of {len(keys) + 1})"
    assert miss.missing == ["blocks.7.ffn.0.weight [13824,5120]"]


def test_flux2_variants_are_told_apart_by_shape_not_only_keys():
    """klein 4B and 9B have the same key names; their widths differ."""
    four = dict(keylists.load("Flux-v2-Klein-4B"))
    nine = dict(keylists.load("Flux-v2-Klein-9B"))
    assert four["img_in.weight"] != nine["img_in.weight"]


def test_comfyui_norm_spelling_is_an_alias_and_is_kept(tmp_path):
    """ComfyUI (since 2026-02) saves Flux-family RMSNorm scales as `.weight`: identified as the
    `.scale` the lists have, and the file's own spelling is what extract writes."""
    keys = [
        (DM + name.replace("_norm.scale", "_norm.weight"), shape)
        for name, shape in keylists.load("Flux-v2-Klein-4B")
    ]
    assert any(name.endswith("query_norm.weight") for name, _ in keys)
    path = write_sparse_safetensors(tmp_path / "klein-comfy.safetensors", keys, "BF16")
    out = tmp_path / "klein.safetensors"
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
        assert analysis.architecture == "Flux-v2-Klein-4B-AIO" and not analysis.unknown_keys
        mtk.write_plan(extract(model, "Flux-v2"), out)
    with safe_open(out, "np") as handle:
        names = set(handle.keys())
    expected = {name[len(DM) :] for name, _ in keys}
    assert names == expected  # bare, and still `.weight`


def test_chroma_diffusers_spelling_is_not_taken_for_an_alias(tmp_path):
    """The diffusers Chroma list says `norms.N.weight` itself: it matches as it is."""
    path = write_sparse_safetensors(
        tmp_path / "chroma.safetensors", keys_of([("", "Chroma-Diffusers")]), "BF16"
    )
    with mtk.open(path) as model:
        assert mtk.analyze(model).components == {"Chroma": "Chroma-Diffusers"}


@pytest.mark.slow  # 56 GB of sparse zeros read through
def test_parts_of_an_all_in_one_file_come_out_as_comfyui_loads_them(tmp_path):
    """Transformer to diffusion_models/ (bare), VAE to vae/ (bare), text encoder to
    text_encoders/ (HF naming, `model.layers...`): bit-equal values."""
    parts = [
        (DM, "Qwen-Image"),
        ("vae.", "VAE-Wan2.1"),
        ("text_encoders.qwen25_7b.transformer.", "Qwen2.5-VL-7B"),
    ]
    keys = keys_of(parts)
    rng = np.random.default_rng(7)
    probe = {
        DM + "img_in.bias": rng.standard_normal(3072).astype(np.float16),
        "vae.conv1.bias": rng.standard_normal(32).astype(np.float16),
    }
    path = write_sparse_safetensors(tmp_path / "aio.safetensors", keys, "F16", probe)
    with mtk.open(path) as model:
        for cls, prefix, list_name in (
            ("Qwen-Image", DM, "Qwen-Image"),
            ("VAE-Wan2.1", "vae.", "VAE-Wan2.1"),
            ("Qwen2.5-VL-7B", "text_encoders.qwen25_7b.transformer.", "Qwen2.5-VL-7B"),
        ):
            out = tmp_path / f"{cls}.safetensors"
            mtk.write_plan(extract(model, cls), out)
            with safe_open(out, "np") as handle:
                assert set(handle.keys()) == {k for k, _ in keylists.load(list_name)}, cls
                for full, values in probe.items():
                    if full.startswith(prefix):
                        written = handle.get_tensor(full[len(prefix) :])
                        assert np.array_equal(written, values), full
            with mtk.open(out) as part:
                assert mtk.analyze(part).architecture == cls


def test_prune_keeps_a_bf16_all_in_one_as_it_is(tmp_path):
    parts = [
        (DM, "Z-Image"),
        ("vae.", "VAE-v3-SD"),
        ("text_encoders.qwen3_4b.transformer.", "Qwen3-4B"),
    ]
    keys = keys_of(parts) + [("model.junk.step", ())]
    path = write_sparse_safetensors(tmp_path / "z.safetensors", keys, "BF16")
    with mtk.open(path) as model:
        plan = prune(model)
    assert {entry.dtype.name for entry in plan.entries} == {"BF16"}
    assert len(plan.entries) == len(keys) - 1  # only the junk went


def test_a_bare_flux1_dev_is_named_by_its_variant_and_hinted_right(tmp_path):
    """BFL's own flux1-dev.safetensors: unprefixed `guidance_in.*`."""
    from model_toolkit.findings import gather_findings
    from model_toolkit.report import basic_report

    keys = keylists.load("Flux-v1-Dev")
    assert any(name.startswith("guidance_in.") for name, _ in keys)
    path = write_sparse_safetensors(tmp_path / "flux1-dev.safetensors", keys, "BF16")
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
        findings = gather_findings(analysis, model.metadata, read_data=False)
    text = basic_report(analysis, findings)
    assert "Model type identified as Flux-v1 (Flux-v1-Dev)." in text
    assert [h.text() for h in findings.hints] == [
        "variant: dev-like (guidance distilled) (guidance_in is present)"
    ]


def test_a_bare_wan_file_is_named_by_its_variant(tmp_path):
    from model_toolkit.report import model_type

    keys = reference("Wan2.2-TI2V-5B-transformer")
    path = write_sparse_safetensors(tmp_path / "wan.safetensors", keys, "BF16")
    with mtk.open(path) as model:
        assert model_type(mtk.analyze(model)) == "Wan (Wan-v2.2-TI2V-5B)"


@pytest.mark.slow  # a 10 GB sparse all-in-one, split and built back
def test_an_all_in_one_file_split_into_parts_builds_back_bit_identical(tmp_path):
    from model_toolkit.operations import build

    te = "text_encoders.gemma2_2b.transformer."
    parts = [(DM, "Lumina2-transformer"), ("vae.", "VAE-v3-SD"), (te, "Gemma2-2B")]
    keys = keys_of(parts)
    rng = np.random.default_rng(11)
    probe = {
        name: rng.standard_normal(shape).astype(np.float16)
        for name, shape in keys
        if 0 < int(np.prod(shape)) <= 1 << 16
    }
    aio = write_sparse_safetensors(tmp_path / "lumina-aio.safetensors", keys, "F16", probe)
    classes = {"Lumina-2": DM, "VAE-v3": "vae.", "Gemma-2-2B": te}
    with mtk.open(aio) as model:
        for cls in classes:
            mtk.write_plan(extract(model, cls), tmp_path / f"{cls}.safetensors")
        pruned = prune(model, drop=("Gemma-2-2B",))
        assert not [e.name for e in pruned.entries if e.name.startswith("text_encoders.")]
    opened = [mtk.open(tmp_path / f"{cls}.safetensors") for cls in classes]
    try:
        plan = build(
            "Lumina-2-AIO", [(cls, m, None) for cls, m in zip(classes, opened, strict=True)]
        )
        rebuilt = mtk.write_plan(plan, tmp_path / "rebuilt.safetensors")
    finally:
        for m in opened:
            m.close()
    with safe_open(aio, "np") as a, safe_open(rebuilt, "np") as b:
        assert set(a.keys()) == set(b.keys())
        for name in probe:
            assert a.get_tensor(name).tobytes() == b.get_tensor(name).tobytes(), name
    with mtk.open(rebuilt) as model:
        assert {n: (r.dtype.name, r.shape) for n, r in model.tensors.items()} == {
            name: ("F16", tuple(shape)) for name, shape in keys
        }
        assert mtk.analyze(model).architecture == "Lumina-2-AIO"


@pytest.mark.parametrize(
    ("file_name", "parts", "hint"),
    [
        ("flux1-kontext-dev.safetensors", [("", "Flux-v1-Dev")], "Flux.1 Kontext"),
        ("z_image_turbo_bf16.safetensors", [("", "ZImage-transformer")], "Z-Image Turbo"),
        (
            "qwen_image_edit_2509_fp8.safetensors",
            [("", "QwenImage-transformer")],
            "Qwen-Image-Edit-2509",
        ),
        (
            "wan2.2_t2v_high_noise_14B_fp16.safetensors",
            [("", "Wan2.2-T2V-A14B-transformer")],
            "Wan 2.2 A14B high-noise expert",
        ),
        (
            "flux-2-klein-base-4b.safetensors",
            [("", "Flux2-klein-4B-transformer")],
            "FLUX.2 klein base 4B",
        ),
        ("flux2-dev-base.safetensors", [("", "Flux2-dev-transformer")], None),  # not a klein
        ("zimage.safetensors", [("", "ZImage-transformer")], None),  # the name says nothing
    ],
)
def test_what_keys_cannot_tell_is_a_hint_from_the_file_name(tmp_path, file_name, parts, hint):
    from model_toolkit.hints import name_hints

    path = write_sparse_safetensors(tmp_path / file_name, keys_of(parts), "BF16")
    with mtk.open(path) as model:
        found = name_hints(mtk.analyze(model))
    assert [h.value for h in found] == ([hint] if hint else [])
    for h in found:
        assert h.topic == "variant" and "keys cannot tell" in h.evidence


@pytest.mark.parametrize(
    ("layout", "first_folder", "inbox", "folders"),
    [
        (
            "comfyui",
            "checkpoints",
            "autoprune",
            {
                "checkpoint": "checkpoints",
                "unet": "diffusion_models",
                "vae": "vae",
                "text_encoder": "text_encoders",
            },
        ),
        (
            "a1111",
            "Stable-diffusion",
            "Autoprune",
            {
                "checkpoint": "Stable-diffusion",
                "unet": "Components",
                "vae": "VAE",
                "text_encoder": "Components",
            },
        ),
    ],
)
@pytest.mark.slow  # 12 GB of sparse files pruned, written and read back
def test_autoprune_files_each_new_kind_into_its_folder(
    tmp_path, layout, first_folder, inbox, folders
):
    from model_toolkit.autoprune import Autopruner, Options, make_layout

    models = tmp_path / "models"
    (models / first_folder).mkdir(parents=True)
    (models / inbox).mkdir()
    files = {
        "wan2.1_t2v_1.3B.safetensors": ([("", "Wan2.1-T2V-1.3B-transformer")], "unet"),
        "qwen_image_vae.safetensors": ([("", "VAE-Wan2.1")], "vae"),
        "gemma_2_2b.safetensors": ([("", "Gemma2-2B")], "text_encoder"),
        "wan-aio.safetensors": (
            [(DM, "Wan2.1-T2V-1.3B-transformer"), ("vae.", "VAE-Wan2.1")],
            "checkpoint",
        ),
    }
    for name, (parts, _) in files.items():
        write_sparse_safetensors(models / inbox / name, keys_of(parts), "BF16")
    outcomes = Autopruner(make_layout(models, layout), Options(settle_seconds=0)).run_once()
    by_file = {o.file: o for o in outcomes}
    for name, (_, kind) in files.items():
        outcome = by_file[name]
        assert (outcome.status, outcome.kind) == ("filed", kind), (name, outcome.reason)
        assert outcome.destination == str(models / folders[kind] / name)
        assert (models / folders[kind] / name).is_file()


# -- TAESD: the preview decoders of ComfyUI's vae_approx/ (small torch pickles, numeric keys)


def save_taesd(path, name: str) -> None:
    import torch

    keys = key_list(f"taesd/{name}")
    torch.save({key: torch.zeros(shape) for key, shape in keys}, path)


@pytest.mark.parametrize(
    ("file_name", "list_name", "hint"),
    [
        ("taesd_decoder.pth", "TAESD-Decoder", "TAESD (SD-v1/v2 latents)"),
        ("taesdxl_encoder.pth", "TAESD-Encoder", "TAESD XL (SDXL latents)"),
        ("taef1_decoder.pth", "TAESD3-Decoder", "TAEF1 (Flux.1 latents)"),
        ("taesd3_encoder.pth", "TAESD3-Encoder", "TAESD3 (SD3 latents)"),
        ("taef2_decoder.pth", "TAEF2-Decoder", None),
        ("taef2_encoder.pth", "TAEF2-Encoder", None),
    ],
)
def test_taesd_preview_decoders_are_identified(tmp_path, file_name, list_name, hint):
    from model_toolkit.hints import name_hints
    from model_toolkit.report import model_type

    path = tmp_path / file_name
    save_taesd(path, list_name)
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert model_type(analysis) == f"TAESD ({list_name})"
    assert not analysis.unknown_keys
    assert [h.value for h in name_hints(analysis)] == ([hint] if hint else [])


@pytest.mark.parametrize(
    ("layout", "folder", "suffix"),
    [("comfyui", "vae_approx", ".safetensors"), ("a1111", "VAE-approx", ".pth")],
)
def test_autoprune_files_a_preview_decoder_into_vae_approx(tmp_path, layout, folder, suffix):
    """ComfyUI finds previews by name, any extension; AUTOMATIC1111 and Forge torch.load
    `VAE-approx/taesdxl_decoder.pth` by exact name: a torch zip for them, values kept."""
    import torch

    from model_toolkit.autoprune import Autopruner, Options, make_layout

    models = tmp_path / "models"
    (models / ("checkpoints" if layout == "comfyui" else "Stable-diffusion")).mkdir(parents=True)
    inbox = models / ("autoprune" if layout == "comfyui" else "Autoprune")
    inbox.mkdir()
    save_taesd(inbox / "taesdxl_decoder.pth", "TAESD-Decoder")
    [outcome] = Autopruner(make_layout(models, layout), Options(settle_seconds=0)).run_once()
    assert (outcome.status, outcome.kind) == ("filed", "vae_approx"), outcome.reason
    filed = models / folder / f"taesdxl_decoder{suffix}"
    assert outcome.destination == str(filed)
    if suffix == ".pth":  # loads as the webui loads it, float32 as it came
        state = torch.load(filed, map_location="cpu", weights_only=True)
        assert {k: tuple(v.shape) for k, v in state.items()} == dict(
            key_list("taesd/TAESD-Decoder")
        )
        assert {v.dtype for v in state.values()} == {torch.float32}


@pytest.mark.slow  # a 40 GB sparse model pruned
def test_the_empty_edit_2511_marker_is_read_and_written(tmp_path):
    """`__index_timestep_zero__` has no elements: it survives prune, the copy is identified
    as Edit-2511 again, and a checkpoint of it loads in torch with the same empty shape."""
    import torch

    keys = keys_of([(DM, "QwenImage-Edit-2511-transformer")])
    marker = DM + "__index_timestep_zero__"
    assert (marker, (0,)) in keys
    path = write_sparse_safetensors(tmp_path / "edit.safetensors", keys, "BF16")
    out = tmp_path / "pruned.safetensors"
    with mtk.open(path) as model:
        mtk.write_plan(prune(model), out)
    with mtk.open(out) as model:
        assert model.tensors[marker].shape == (0,) and mtk.read_all(model.tensors[marker]).size == 0
        assert mtk.analyze(model).components == {"Qwen-Image": "Qwen-Image-Edit-2511"}
    # A checkpoint of 40 GB is 40 GB on disk (a zip has no holes): the marker and one tensor.
    small = write_sparse_safetensors(
        tmp_path / "small.safetensors", [(marker, (0,)), (DM + "img_in.bias", (3072,))], "BF16"
    )
    with mtk.open(small) as model:
        ckpt = mtk.write_plan(mtk.convert(model), tmp_path / "small.ckpt")
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state[marker].shape == (0,) and state[marker].dtype == torch.bfloat16


# -- LoRAs of the new families: lists derived from the transformers' by the trainers' rules


def lora_of(base_list: str, module: str, down: str, up: str, rank: int, every: int = 1):
    """A LoRA for every `every`-th weight of a reference list, in a trainer's naming (what the
    trainers write, built here independently of the package's rule)."""
    keys = []
    weights = [(n, s) for n, s in reference(base_list) if n.endswith(".weight") and len(s) >= 2]
    for name, shape in weights[::every]:
        path = name[: -len(".weight")]
        stem = module.format(path=path, flat=path.replace(".", "_"))
        keys.append((f"{stem}.{down}", (rank, shape[1], *shape[2:])))
        keys.append((f"{stem}.{up}", (shape[0], rank, *(1 for _ in shape[2:]))))
        if down == "lora_down.weight":
            keys.append((f"{stem}.alpha", ()))
    return keys


@pytest.mark.parametrize(
    ("base_list", "module", "down", "up", "architecture", "component"),
    [
        (
            "Wan2.1-T2V-14B-transformer",
            "lora_unet_{flat}",
            "lora_down.weight",
            "lora_up.weight",
            "LoRA-Wan",
            "LoRA-Wan-v2.1-T2V-14B-Kohya",
        ),
        (
            "QwenImage-transformer",
            "transformer.{path}",
            "lora_A.weight",
            "lora_B.weight",
            "LoRA-Qwen-Image",
            "LoRA-Qwen-Image-Diffusers",
        ),
        (
            "ZImage-transformer",
            "diffusion_model.{path}",
            "lora_A.weight",
            "lora_B.weight",
            "LoRA-Z-Image",
            "LoRA-Z-Image-AIToolkit",
        ),
        (
            "Flux2-klein-9B-transformer",
            "lora_unet_{flat}",
            "lora_down.weight",
            "lora_up.weight",
            "LoRA-Flux-v2",
            "LoRA-Flux-v2-Klein-9B-Kohya",
        ),
        (
            "Wan2.2-TI2V-5B-transformer-diffusers",
            "transformer.{path}",
            "lora_A.weight",
            "lora_B.weight",
            "LoRA-Wan",
            "LoRA-Wan-v2.2-TI2V-5B-Diffusers",
        ),
    ],
)
def test_loras_of_the_new_families_name_their_base(
    tmp_path, base_list, module, down, up, architecture, component
):
    keys = lora_of(base_list, module, down, up, rank=16, every=3)
    path = write_sparse_safetensors(tmp_path / "lora.safetensors", keys, "BF16")
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture == architecture
    assert analysis.components == {architecture: component}
    assert analysis.lora_ranks == [16] and not analysis.unknown_keys
    base = mtk.architectures.registry.load_registry().architectures[architecture].base
    assert base == architecture.removeprefix("LoRA-")


def test_a_lora_for_another_width_is_a_near_miss_with_its_shapes(tmp_path):
    """Z-Image's names, but Lumina 2's widths (2304, not 3840): not a Z-Image LoRA."""
    keys = lora_of(
        "Lumina2-transformer", "diffusion_model.{path}", "lora_A.weight", "lora_B.weight", 8
    )
    z_names = {
        n
        for n, _ in lora_of(
            "ZImage-transformer", "diffusion_model.{path}", "lora_A.weight", "lora_B.weight", 8
        )
    }
    keys = [(n, s) for n, s in keys if n in z_names]
    assert keys
    path = write_sparse_safetensors(tmp_path / "lora.safetensors", keys, "BF16")
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture == "LoRA-Lumina-2"
    [miss] = [r for r in analysis.detection.rejected if r.name == "LoRA-Z-Image-AIToolkit"]
    assert miss.reason.startswith("Shapes disagree")


# -- Text-encoder LoRAs: sd-scripts names the encoder's attention and MLP layers from the model
# inside the file's `model.` (`lora_te_layers_0_self_attn_q_proj`), OneTrainer's diffusers
# form `text_encoder.layers.0.self_attn.q_proj.lora_A.weight`; T5's from `encoder.block`.


def te_lora_of(base_list: str, form: str, rank: int = 8, every: int = 1):
    """A text-encoder LoRA of a reference list, as the trainers name it (built here, apart
    from the package's rule): kohya `lora_te_` or PEFT `text_encoder.`."""
    import re

    layer = re.compile(
        r"(model\.)?(layers\.\d+\.(self_attn|mlp)\.\w+"
        r"|encoder\.block\.\d+\.layer\.\d+\.(SelfAttention\.[qkvo]|DenseReluDense\.w\w*))$"
    )
    keys = []
    weights = [(n, s) for n, s in reference(base_list) if n.endswith(".weight")]
    for name, (out, inner) in [(n, s) for n, s in weights if len(s) == 2][::every]:
        match = layer.match(name[: -len(".weight")])
        if not match:
            continue
        path = match.group(2)
        if form == "kohya":
            stem = "lora_te_" + path.replace(".", "_")
            keys += [(f"{stem}.lora_down.weight", (rank, inner)), (f"{stem}.alpha", ())]
            keys.append((f"{stem}.lora_up.weight", (out, rank)))
        else:
            stem = "text_encoder." + path
            keys += [(f"{stem}.lora_A.weight", (rank, inner))]
            keys.append((f"{stem}.lora_B.weight", (out, rank)))
    return keys


@pytest.mark.parametrize(
    ("base_list", "form", "architecture", "component", "also"),
    [
        ("Gemma2-2B", "kohya", "LoRA-Lumina-2-TE", "LoRA-Gemma-2-2B-Kohya", None),
        ("Qwen2.5-VL-7B", "kohya", "LoRA-Qwen-Image-TE", "LoRA-Qwen2.5-VL-7B-Kohya", None),
        ("UMT5-XXL-encoder", "kohya", "LoRA-Wan-TE", "LoRA-UMT5-XXL-Kohya", None),
        ("Qwen3-8B", "peft", "LoRA-Flux-v2-Klein-9B-TE", "LoRA-Qwen3-8B-PEFT", None),
        ("Qwen3-0.6B", "kohya", "LoRA-Anima-TE", "LoRA-Qwen3-0.6B-Kohya", None),
        # Z-Image and FLUX.2 klein 4B share Qwen3-4B; HiDream-I1 and HunyuanVideo a Llama-3-8B
        ("Qwen3-4B", "peft", "LoRA-Flux-v2-Klein-4B-TE", "LoRA-Qwen3-4B-PEFT", "Z-Image"),
        ("Llama3.1-8B", "kohya", "LoRA-HunyuanVideo-TE", "LoRA-Llama-3.1-8B-Kohya", "HiDream-I1"),
    ],
)
def test_text_encoder_loras_of_the_new_families(
    tmp_path, base_list, form, architecture, component, also
):
    from model_toolkit.hints import base_hints

    keys = te_lora_of(base_list, form, every=2)
    path = write_sparse_safetensors(tmp_path / "te.safetensors", keys, "BF16")
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture == architecture
    assert list(analysis.components.values()) == [component]
    assert analysis.lora_ranks == [8] and not analysis.unknown_keys
    hints = base_hints(analysis)
    if also is None:
        assert hints == []
    else:
        [hint] = hints
        assert also in hint.value and "keys cannot tell" in hint.evidence


def test_a_lora_of_the_transformer_and_its_text_encoder_is_one_lora(tmp_path):
    """sd-scripts' Anima LoRAs train Qwen3 with the DiT (`lora_unet_` + `lora_te_`)."""
    keys = lora_of("Anima-transformer", "lora_unet_{flat}", "lora_down.weight", "lora_up.weight", 8)
    keys += te_lora_of("Qwen3-0.6B", "kohya")
    path = write_sparse_safetensors(tmp_path / "anima.safetensors", keys, "BF16")
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
        assert analysis.architecture == "LoRA-Anima"
        assert analysis.components == {
            "LoRA-Anima": "LoRA-Anima-Kohya",
            "LoRA-Qwen3-0.6B": "LoRA-Qwen3-0.6B-Kohya",
        }
        assert not analysis.unknown_keys and not analysis.junk_keys


def test_a_text_encoder_lora_for_another_width_is_a_near_miss(tmp_path):
    """Qwen3-8B and Llama-3-8B have the same attention widths, not the same MLP: a Qwen3-8B
    encoder LoRA whose first MLP has Llama's width is neither's, and says why."""
    llama = dict(te_lora_of("Llama3.1-8B", "peft"))
    keys = [
        (n, llama[n] if n.startswith("text_encoder.layers.0.mlp.") else s)
        for n, s in te_lora_of("Qwen3-8B", "peft")
    ]
    path = write_sparse_safetensors(tmp_path / "te.safetensors", keys, "BF16")
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture is None
    reasons = {r.name: r.reason for r in analysis.detection.rejected}
    assert reasons["LoRA-Qwen3-8B-PEFT"].startswith("Shapes disagree")
    assert reasons["LoRA-Llama-3.1-8B-PEFT"].startswith("Shapes disagree")


def test_ltx2_files_say_their_configuration(tmp_path):
    """LTX-2 files carry the config their loaders build the model from in `__metadata__`."""
    import json

    from model_toolkit.hints import header_hints

    config = {"model_version": "2.0", "transformer": {"num_layers": 48}, "vae": {"dims": 3}}
    path = write_sparse_safetensors(
        tmp_path / "ltx-2.safetensors",
        reference("LTX2-19B-transformer"),
        "BF16",
        metadata={"config": json.dumps(config)},
    )
    with mtk.open(path) as model:
        hints = header_hints(mtk.analyze(model), model.metadata)
    [hint] = [h for h in hints if h.topic == "configuration"]
    assert hint.value == "3 entries; model_version=2.0; sections transformer, vae"
    assert "metadata `config`" in hint.evidence


@pytest.mark.parametrize(
    ("family", "tensors"),
    [
        ("LoHa", {"hada_w1_a": "oR", "hada_w1_b": "Ri", "hada_w2_a": "oR", "hada_w2_b": "Ri"}),
        ("LoKr", {"lokr_w1": "ab", "lokr_w2": "cd"}),
    ],
)
def test_lycoris_adapters_of_a_new_family(tmp_path, family, tensors):
    """LyCORIS LoHa and LoKr of Qwen-Image, in kohya's module naming (as LyCORIS writes them)."""
    from model_toolkit.findings import gather_findings
    from model_toolkit.report import basic_report

    sizes = {"R": 8, "a": 4, "b": 4}
    keys = []
    linear = [(n, s) for n, s in reference("QwenImage-transformer") if n.endswith(".weight")]
    for name, (out, inner) in [(n, s) for n, s in linear if len(s) == 2][::5]:
        stem = "lora_unet_" + name[: -len(".weight")].replace(".", "_")
        for suffix, dims in tensors.items():
            if family == "LoKr" and suffix == "lokr_w2":
                shape = (out // 4, inner // 4)
            else:
                shape = tuple({"o": out, "i": inner}.get(d) or sizes[d] for d in dims)
            keys.append((f"{stem}.{suffix}", shape))
        keys.append((f"{stem}.alpha", ()))
    path = write_sparse_safetensors(tmp_path / f"{family}.safetensors", keys, "BF16")
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
        findings = gather_findings(analysis, model.metadata, read_data=False)
    assert analysis.architecture == "LoRA-Qwen-Image"
    assert analysis.components == {"LoRA-Qwen-Image": f"{family}-Qwen-Image"}
    assert not analysis.unknown_keys
    assert f"{family} for Qwen-Image" in basic_report(analysis, findings)
