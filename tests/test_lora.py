"""LoRA families: kohya (SD2, SDXL, SD3/3.5, Flux), PEFT/diffusers, ai-toolkit, OneTrainer
DoRA, XLabs, BFL control LoRAs, from real dumps and verified patterns (tests/data/keys/lora):
identified with their base, rank and alpha; wrong shapes rejected with the reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import model_toolkit as mtk
from model_toolkit.architectures.keylists import load_path
from model_toolkit.readings import lora_alphas

LORA = Path(__file__).parent / "data" / "keys" / "lora"

# file -> (architecture, {class: component}, base)
CASES = {
    "LoRA-kohya-SD2-UNET": ("LoRA-v2", {"LoRA-v2-UNET": "LoRA-v2-UNET-Kohya"}, "SD-v2"),
    "LoRA-PEFT-SD1-UNET": ("LoRA-v1-UNET", {"LoRA-v1-UNET": "LoRA-v1-UNET-PEFT"}, "SD-v1"),
    "LoRA-kohya-SDXL-UNET": ("LoRA-XL", {"LoRA-XL-UNET": "LoRA-XL-UNET-Kohya"}, "SD-XL"),
    "LoRA-kohya-SDXL-UNET-LoCon": ("LoRA-XL", {"LoRA-XL-UNET": "LoRA-XL-UNET-Kohya"}, "SD-XL"),
    "LoRA-kohya-SDXL-UNET-diffusers-names": (
        "LoRA-XL",
        {"LoRA-XL-UNET": "LoRA-XL-UNET-Kohya-Diffusers"},
        "SD-XL",
    ),
    "LoRA-PEFT-SDXL-UNET": ("LoRA-XL", {"LoRA-XL-UNET": "LoRA-XL-UNET-PEFT"}, "SD-XL"),
    "LoRA-kohya-SD3-medium": ("LoRA-v3", {"LoRA-v3": "LoRA-v3-Kohya"}, "SD-v3"),
    "LoRA-kohya-SD3.5-large": (
        "LoRA-v3.5-Large",
        {"LoRA-v3.5-Large": "LoRA-v3.5-Large-Kohya"},
        "SD-v3.5-Large",
    ),
    "LoRA-kohya-SD3.5-medium": (
        "LoRA-v3.5-Medium",
        {"LoRA-v3.5-Medium": "LoRA-v3.5-Medium-Kohya"},
        "SD-v3.5-Medium",
    ),
    "LoRA-Flux-kohya-real": ("LoRA-Flux", {"LoRA-Flux": "LoRA-Flux-Kohya"}, "Flux-v1"),
    "LoRA-Flux-kohya-with-TE1-real": (
        "LoRA-Flux",
        {"LoRA-Flux": "LoRA-Flux-Kohya", "LoRA-Flux-TE1": "LoRA-Flux-TE1-Kohya"},
        "Flux-v1",
    ),
    "LoRA-Flux-diffusers-real": ("LoRA-Flux", {"LoRA-Flux": "LoRA-Flux-Diffusers"}, "Flux-v1"),
    "LoRA-Flux-diffusers-no-proj-mlp-real": (
        "LoRA-Flux",
        {"LoRA-Flux": "LoRA-Flux-Diffusers"},
        "Flux-v1",
    ),
    "LoRA-Flux-PEFT-base-model-real": ("LoRA-Flux", {"LoRA-Flux": "LoRA-Flux-PEFT"}, "Flux-v1"),
    "LoRA-Flux-aitoolkit-real": ("LoRA-Flux", {"LoRA-Flux": "LoRA-Flux-AIToolkit"}, "Flux-v1"),
    "LoRA-Flux-OneTrainer-DoRA-real": (
        "LoRA-Flux",
        {
            "LoRA-Flux": "LoRA-Flux-OneTrainer",
            "LoRA-Flux-TE1": "LoRA-Flux-TE1-OneTrainer",
            "LoRA-Flux-TE2": "LoRA-Flux-TE2-OneTrainer",
        },
        "Flux-v1",
    ),
    "LoRA-Flux-xlabs-sample": ("LoRA-Flux", {"LoRA-Flux": "LoRA-Flux-XLabs"}, "Flux-v1"),
    "LoRA-Flux-Control-Depth-real": (
        "LoRA-Flux-Control",
        {"LoRA-Flux-Control": "LoRA-Flux-Control-BFL"},
        "Flux-v1",
    ),
}


def ranked(entries, rank):
    """A list's shapes with its free dimension (-1 in the patterns) set to `rank`."""
    return [(n, tuple(rank if d == -1 else d for d in s)) for n, s in entries]


def write_lora(path, entries, alpha=None):
    """Float16 LoRA weights (small random values), alphas as float32 scalars."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in entries:
        if name.endswith(".alpha"):
            tensors[name] = np.array(alpha if alpha is not None else 1.0, np.float32)
        elif np.prod(shape) > 1_000_000:  # full-size weights (control LoRAs): zeros will do
            tensors[name] = np.zeros(shape, np.float16)
        else:
            tensors[name] = (rng.standard_normal(shape) * 0.01).astype(np.float16)
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_lora_families_are_identified(name, tmp_path):
    arch, components, base = CASES[name]
    entries = load_path(LORA / f"{name}.txt")
    pattern = any(-1 in shape for _, shape in entries)
    entries = ranked(entries, 8) if pattern else entries
    path = write_lora(tmp_path / "lora.safetensors", entries, alpha=4)
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
        assert analysis.architecture == arch
        assert analysis.components == components
        assert analysis.unknown_keys == []
        if pattern:
            assert analysis.lora_ranks == [8]
        has_alpha = any(n.endswith(".alpha") for n, _ in entries)
        assert lora_alphas(analysis) == ([4.0] if has_alpha else [])
    from model_toolkit.architectures.registry import load_registry

    assert load_registry().architectures[arch].base == base


def test_a_lora_trained_on_some_modules_only(tmp_path):
    entries = ranked(load_path(LORA / "LoRA-kohya-SDXL-UNET.txt"), 16)
    attention_only = [(n, s) for n, s in entries if "_attn1_" in n or "_attn2_" in n]
    path = write_lora(tmp_path / "some.safetensors", attention_only[:300], alpha=8)
    result = subprocess.run(
        [sys.executable, "-m", "model_toolkit", "inspect", path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Model type identified as LoRA-XL." in result.stdout
    assert "LoRA for SD-XL: rank 16, alpha 8." in result.stdout


def test_a_lora_whose_shapes_disagree_with_its_base_is_rejected(tmp_path):
    entries = ranked(load_path(LORA / "LoRA-kohya-SDXL-UNET.txt"), 16)
    name = "lora_unet_input_blocks_4_1_proj_in.lora_down.weight"
    broken = [(n, (16, 999) if n == name else s) for n, s in entries]
    path = write_lora(tmp_path / "broken.safetensors", broken)
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture is None
    [rejection] = [r for r in analysis.detection.rejected if r.name == "LoRA-XL-UNET-Kohya"]
    assert rejection.reason == f"Shapes disagree (1 of {len(entries)})"
    assert rejection.missing == [f"{name} [-1,640] (found [16,999])"]


def test_an_sd1_lora_is_not_taken_for_an_sd2_one(tmp_path):
    """SD-v1 and SD-v2 kohya LoRAs share names; SD-v1's cross-attention takes 768 inputs."""
    entries = ranked(load_path(LORA / "LoRA-kohya-SD2-UNET.txt"), 4)
    sd1 = [
        (n, (4, 768) if "attn2_to_k.lora_down" in n or "attn2_to_v.lora_down" in n else s)
        for n, s in entries
    ]
    path = write_lora(tmp_path / "sd1ish.safetensors", sd1)
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture != "LoRA-v2"
    assert any(
        r.name == "LoRA-v2-UNET-Kohya" and r.reason.startswith("Shapes disagree")
        for r in analysis.detection.rejected
    )


def test_lora_json_report_and_autoprune_kind(tmp_path):
    entries = ranked(load_path(LORA / "LoRA-kohya-Flux.txt"), 32)
    path = write_lora(tmp_path / "flux-lora.safetensors", entries, alpha=16)
    result = subprocess.run(
        [sys.executable, "-m", "model_toolkit", "inspect", path, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(result.stdout)
    assert report["lora"] == {"base": "Flux-v1", "ranks": [32], "alphas": [16.0]}
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "autoprune").mkdir()
    path.rename(models / "autoprune" / "flux-lora.safetensors")
    from model_toolkit.autoprune import Autopruner, Options, make_layout

    [outcome] = Autopruner(make_layout(models), Options(settle_seconds=0)).run_once()
    assert (outcome.status, outcome.kind, outcome.architecture) == ("filed", "lora", "LoRA-Flux")
    assert (models / "loras" / "flux-lora.safetensors").is_file()


@pytest.mark.parametrize(
    ("family", "base", "arch", "expected"),
    [
        ("LoHa", "v1", "LoRA-v1", {"LoRA-v1-UNET": "LoHa-v1-UNET", "LoRA-v1-CLIP": "LoHa-v1-CLIP"}),
        ("LoKr", "v1", "LoRA-v1", {"LoRA-v1-UNET": "LoKr-v1-UNET", "LoRA-v1-CLIP": "LoKr-v1-CLIP"}),
        ("LoHa", "XL", "LoRA-XL", {"LoRA-XL-UNET": "LoHa-XL-UNET", "LoRA-XL-TE1": "LoHa-XL-TE1"}),
        ("LoKr", "XL", "LoRA-XL", {"LoRA-XL-UNET": "LoKr-XL-UNET", "LoRA-XL-TE1": "LoKr-XL-TE1"}),
    ],
)
def test_lycoris_loha_and_lokr(tmp_path, family, base, arch, expected):
    """LyCORIS files use kohya's module names with hada_* (LoHa) or lokr_* (LoKr) tensors."""
    from model_toolkit.architectures import keylists
    from model_toolkit.report import Findings, lora_text

    unet = keylists.load(f"{family}-{base}-UNET")
    text = keylists.load(f"{family}-{base}-{'CLIP' if base == 'v1' else 'TE1'}")
    modules = sorted({n.rsplit(".", 1)[0] for n, _ in unet})[:40]  # a preset trains some
    entries = [(n, s) for n, s in unet if n.rsplit(".", 1)[0] in modules] + text
    path = write_lora(tmp_path / "lycoris.safetensors", ranked(entries, 8), alpha=8)
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert (analysis.architecture, analysis.components) == (arch, expected)
    line = lora_text(analysis, Findings())
    base_name = "SD-v1" if base == "v1" else "SD-XL"
    assert line == (
        f"LoKr for {base_name}." if family == "LoKr" else f"LoHa for {base_name}: rank 8."
    )


def test_a_lora_saved_by_torch_as_ckpt(tmp_path):
    """Some trainers save .pt/.ckpt: read by the allow-list unpickler, identified the same."""
    import torch

    entries = ranked(load_path(LORA / "LoRA-kohya-SDXL-UNET.txt"), 4)[:90]
    tensors = {n: torch.full(s, 0.5) if s else torch.tensor(2.0) for n, s in entries}
    path = tmp_path / "lora.ckpt"
    torch.save(tensors, path)
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
        assert model.format == "torch-zip"
        assert analysis.architecture == "LoRA-XL"
        assert analysis.lora_ranks == [4]
        assert lora_alphas(analysis) == [2.0]


def test_a_peft_dora_lora_has_magnitude_vectors(tmp_path):
    entries = ranked(load_path(LORA / "LoRA-PEFT-SDXL-UNET.txt"), 8)
    magnitudes = [
        (n.replace(".lora_B.weight", ".lora_magnitude_vector"), (s[0],))
        for n, s in entries
        if n.endswith(".lora_B.weight")
    ]
    path = write_lora(tmp_path / "dora.safetensors", entries + magnitudes)
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture == "LoRA-XL"
    assert analysis.unknown_keys == []
    assert analysis.lora_ranks == [8]


@pytest.mark.parametrize(
    ("unet", "arch", "text"),
    [
        ("LoRA-kohya-SD3.5-large", "LoRA-v3.5-Large", ["lora_te1_", "lora_te2_", "lora_te3_"]),
        ("LoRA-kohya-Flux", "LoRA-Flux", ["lora_te1_", "lora_te3_"]),
    ],
)
def test_kohya_loras_with_their_text_encoders(tmp_path, unet, arch, text):
    """SD3's and Flux's LoRAs may train CLIP-L (te1), CLIP-G (te2) and T5 (te3) too."""
    te1 = load_path(LORA / "LoRA-kohya-SDXL-TE1.txt")  # CLIP-L, as SDXL's te1
    te2 = load_path(LORA / "LoRA-kohya-SDXL-TE2.txt")  # CLIP-G, as SDXL's te2
    t5 = [  # T5 modules, named as OneTrainer's te2 but under kohya's te3 prefix
        (n.replace("lora_te2_", "lora_te3_"), s)
        for n, s in load_path(LORA / "LoRA-Flux-OneTrainer-DoRA-real.txt")
        if n.startswith("lora_te2_") and not n.endswith("dora_scale")
    ]
    pools = {"lora_te1_": te1, "lora_te2_": te2, "lora_te3_": t5}
    entries = load_path(LORA / f"{unet}.txt") + [e for p in text for e in pools[p]]
    path = write_lora(tmp_path / "lora.safetensors", ranked(entries, 4))
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture == arch
    assert analysis.unknown_keys == []
    assert len(analysis.components) == 1 + len(text)


def hints_of(analysis) -> dict[str, str]:
    from model_toolkit.hints import header_hints

    return {hint.topic: hint.value for hint in header_hints(analysis, {})}


@pytest.mark.parametrize(
    ("lists", "arch", "hint"),
    [
        # CLIP-L alone: SDXL's te1, SD3's te1 and Flux's te1 are all `lora_te1_` + CLIP-L
        (["LoRA-kohya-SDXL-TE1"], "LoRA-XL-TE", "SD-XL, SD-v3 or Flux-v1"),
        # CLIP-L and CLIP-G: SDXL's and SD3's pair, not Flux's (its te2 is T5)
        (["LoRA-kohya-SDXL-TE1", "LoRA-kohya-SDXL-TE2"], "LoRA-XL-TE", "SD-XL or SD-v3"),
        # OpenCLIP-H, SD2's alone
        (["LoRA-kohya-SD2-TE"], "LoRA-v2-TE", None),
    ],
)
def test_text_encoder_only_loras_say_every_base_they_fit(tmp_path, lists, arch, hint):
    entries = [e for name in lists for e in load_path(LORA / f"{name}.txt")]
    path = write_lora(tmp_path / "te.safetensors", ranked(entries, 8), alpha=4)
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture == arch
    assert analysis.unknown_keys == [] and analysis.lora_ranks == [8]
    assert hints_of(analysis).get("base model") == hint


def test_a_full_lora_with_its_text_encoder_gets_no_base_hint(tmp_path):
    """A UNet part decides the base: the CLIP-L part's other bases are not hinted."""
    entries = load_path(LORA / "LoRA-kohya-SDXL-UNET.txt") + load_path(
        LORA / "LoRA-kohya-SDXL-TE1.txt"
    )
    path = write_lora(tmp_path / "xl.safetensors", ranked(entries, 8))
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture == "LoRA-XL"
    assert "base model" not in hints_of(analysis)


# -- cloneofsimo's format (lora_diffusion, 2022-23): layers by number, tokens by name


def cloneofsimo_file(path, lists, tokens=(), width=768, rank=4):
    """A file as save_safeloras_with_embeds writes it: `unet:{i}:up/down`, a learned
    token's embedding under the token's name, and the metadata it adds."""
    from safetensors.numpy import save_file

    from model_toolkit.architectures import keylists

    rng = np.random.default_rng(0)
    tensors, metadata = {}, {}
    for name in lists:
        for key, shape in ranked(keylists.load(name), rank):
            tensors[key] = (rng.standard_normal(shape) * 0.01).astype(np.float16)
        group = "text_encoder" if "CLIP" in name else "unet"
        metadata[group] = json.dumps(
            ["CLIPAttention"] if group == "text_encoder" else ["Attention"]
        )
    for token in tokens:
        tensors[token] = rng.standard_normal(width).astype(np.float32)
        metadata[token] = "<embed>"
    save_file(tensors, str(path), metadata)
    return path


def test_a_cloneofsimo_lora_with_its_tokens(tmp_path):
    from model_toolkit.report import Findings, basic_report

    path = cloneofsimo_file(
        tmp_path / "pti.safetensors",
        ["LoRA-v1-UNET-Cloneofsimo", "LoRA-v1-CLIP-Cloneofsimo"],
        tokens=["<s1>", "<s2>"],
    )
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
        text = basic_report(analysis, Findings())
    assert analysis.architecture == "LoRA-v1-Cloneofsimo"
    assert analysis.components == {
        "LoRA-v1-UNET-Cloneofsimo": "LoRA-v1-UNET-Cloneofsimo",
        "LoRA-v1-CLIP-Cloneofsimo": "LoRA-v1-CLIP-Cloneofsimo",
        "Embedding-v1-Cloneofsimo": "Embedding-v1-Cloneofsimo",
    }
    assert analysis.unknown_keys == [] and analysis.junk_keys == []
    assert analysis.lora_ranks == [4]
    assert "LoRA for SD-v1: rank 4." in text
    assert "token embeddings (<s1>, <s2>:" in text and "ComfyUI do not read it" in text


def test_cloneofsimo_presets_and_bases_are_told_apart(tmp_path):
    """The extended preset numbers the resnets' layers in between: its indices have other
    shapes than the default preset's, and SD2's cross-attention reads 1024 wide."""
    path = cloneofsimo_file(tmp_path / "v2.safetensors", ["LoRA-v2-UNET-Cloneofsimo-Extended"])
    with mtk.open(path) as model:
        analysis = mtk.analyze(model)
    assert analysis.architecture == "LoRA-v2-Cloneofsimo"
    assert analysis.components == {"LoRA-v2-UNET-Cloneofsimo": "LoRA-v2-UNET-Cloneofsimo-Extended"}
    rejected = {r.name: r.reason for r in analysis.detection.rejected}
    assert rejected["LoRA-v2-UNET-Cloneofsimo"].startswith("Shapes disagree")
    assert rejected["LoRA-v1-UNET-Cloneofsimo-Extended"].startswith("Shapes disagree")


def test_a_cloneofsimo_text_encoder_lora_and_its_prune_keep_every_tensor(tmp_path):
    from safetensors.numpy import load_file

    from model_toolkit.operations import prune

    path = cloneofsimo_file(
        tmp_path / "te.safetensors", ["LoRA-v2-CLIP-Cloneofsimo"], tokens=["<krk>"], width=1024
    )
    with mtk.open(path) as model:
        analysis = mtk.analyze(model, precision=None)
        assert analysis.architecture == "LoRA-v2-Cloneofsimo-TE"
        out = mtk.write_plan(prune(model, None), tmp_path / "out.safetensors")
    ours, theirs = load_file(str(out)), load_file(str(path))
    assert ours.keys() == theirs.keys() and "<krk>" in ours
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)
