"""Identification from names and shapes, as the original toolkit does it.

Real checkpoints' key lists (tests/data/keys, dumped from real files) are the main truth; other
layouts are composed from the original toolkit's component lists with the prefixes real
checkpoints use.
"""

from __future__ import annotations

import json

import pytest

import model_toolkit as mtk
from conftest import key_list, run_mtk, shapes_of, with_prefix, write_sparse_safetensors
from model_toolkit.analysis import analyze
from model_toolkit.architectures import keylists
from model_toolkit.architectures.detect import detect

SD1 = key_list("Checkpoint-SD1-LDM")
SDXL = key_list("Checkpoint-SDXL-SGM")
SCHEDULER = [(name, (1000,)) for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev")]
EMA = [("model_ema.decay", ()), ("model_ema.num_updates", ())] + with_prefix(
    keylists.load("UNET-v1-EMA"), "model_ema.diffusion_model"
)


def seed(name, prefix=""):
    return with_prefix(keylists.load(name), prefix)


def sd2(clip="CLIP-v2-SD", unet="UNET-v2-SD"):
    return (
        seed(unet, "model.diffusion_model.")
        + seed("VAE-v1-SD", "first_stage_model.")
        + seed(clip, "cond_stage_model.model.")
    )


def replace_shape(entries, name, shape):
    return [(n, shape if n == name else s) for n, s in entries]


def lora(rank, parts=("LoRA-v1A-UNET", "LoRA-v1A-CLIP")):
    return [(n, tuple(rank if d == -1 else d for d in s)) for p in parts for n, s in seed(p)]


CASES = {
    "SD-v1": (
        SD1,
        "SD-v1",
        {"UNET-v1": "UNET-v1-SD", "VAE-v1": "VAE-v1-SD", "CLIP-v1": "CLIP-v1-SD"},
    ),
    "SD-v1 with EMA": (SD1 + EMA + SCHEDULER, "SD-v1", None),
    "SD-v1 inpainting": (
        replace_shape(SD1, "model.diffusion_model.input_blocks.0.0.weight", (320, 9, 3, 3)),
        "SD-v1",
        {"UNET-v1": "UNET-v1-Inpainting", "VAE-v1": "VAE-v1-SD", "CLIP-v1": "CLIP-v1-SD"},
    ),
    "SD-v1 pix2pix": (
        replace_shape(SD1, "model.diffusion_model.input_blocks.0.0.weight", (320, 8, 3, 3)),
        "SD-v1-Pix2Pix",
        None,
    ),
    "SD-v1 without position ids": (
        [e for e in SD1 if not e[0].endswith("position_ids")],
        "SD-v1",
        None,
    ),
    "SD-v2": (
        sd2(),
        "SD-v2",
        {"UNET-v2": "UNET-v2-SD", "VAE-v1": "VAE-v1-SD", "CLIP-v2": "CLIP-v2-SD"},
    ),
    "SD-v2 WD CLIP": (
        sd2("CLIP-v2-WD"),
        "SD-v2",
        {"UNET-v2": "UNET-v2-SD", "VAE-v1": "VAE-v1-SD", "CLIP-v2": "CLIP-v2-WD"},
    ),
    "SD-v2 inpainting": (sd2(unet="UNET-v2-Inpainting"), "SD-v2", None),
    "SD-v2-Depth": (
        sd2(unet="UNET-v2-Depth") + seed("Depth-v2-SD", "depth_model.model."),
        "SD-v2-Depth",
        None,
    ),
    "SD-v1 + ControlNet (the original prefers SD-v1)": (
        SD1 + seed("ControlNet-v1-SD", "control_model."),
        "SD-v1",
        None,
    ),
    "SD-XL": (
        SDXL,
        "SD-XL",
        {
            "UNET-XL": "UNET-XL-SD",
            "VAE-v1": "VAE-v1-SD",
            "CLIP-XL": "CLIP-XL-SD",
            "CLIP-XL-AUX": "CLIP-XL-AUX-SD",
        },
    ),
    "SD-XL without CLIP-L position ids": (
        [e for e in SDXL if "embedders.0" not in e[0] or "position_ids" not in e[0]],
        "SD-XL",
        None,
    ),
    "SD-XL-Refiner": (
        seed("UNET-XL-Refiner", "model.diffusion_model.")
        + seed("VAE-v1-SD", "first_stage_model.")
        + seed("CLIP-XL-SD", "conditioner.embedders.0.model."),
        "SD-XL-Refiner",
        {"UNET-XL-Refiner": "UNET-XL-Refiner", "VAE-v1": "VAE-v1-SD", "CLIP-XL": "CLIP-XL-Refiner"},
    ),
    "EMA only": (EMA, "EMA-v1", {"EMA-UNET-v1": "UNET-v1-EMA"}),
    "missing CLIP": (
        [e for e in SD1 if not e[0].startswith("cond_stage_model.")],
        "UNET-v1-BROKEN",
        {"UNET-v1": "UNET-v1-SD"},
    ),
    "VAE file": (seed("VAE-v1-SD"), "VAE-v1", {"VAE-v1": "VAE-v1-SD"}),
    "CLIP file": (seed("CLIP-v1-SD"), "CLIP-v1", {"CLIP-v1": "CLIP-v1-SD"}),
    "UNET file": (seed("UNET-v1-SD"), "UNET-v1", {"UNET-v1": "UNET-v1-SD"}),
    "ControlNet file": (seed("ControlNet-v1-SD"), "ControlNet-v1", None),
    "LoRA rank 4": (
        lora(4),
        "LoRA-v1",
        {"LoRA-v1-CLIP": "LoRA-v1A-CLIP", "LoRA-v1-UNET": "LoRA-v1A-UNET"},
    ),
    "LoRA rank 128": (lora(128), "LoRA-v1", None),
    "LoRA UNET only": (
        lora(16, ("LoRA-v1-UNET",)),
        "LoRA-v1-UNET",
        {"LoRA-v1-UNET": "LoRA-v1-UNET"},
    ),
    "LoRA CLIP only": (lora(8, ("LoRA-v1A-CLIP",)), "LoRA-v1-CLIP", None),
    "unknown keys only": ([("my.weight", (3, 3)), ("other", (1,))], None, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_identifies_like_the_original(case):
    entries, architecture, components = CASES[case]
    detection = detect(shapes_of(entries))
    assert detection.resolved == architecture
    if components is not None:
        assert detection.components == components


def test_nai_clip_is_found_and_will_be_renamed(tmp_path):
    nai = [
        (n.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."), s)
        for n, s in SD1
    ]
    path = write_sparse_safetensors(tmp_path / "nai.safetensors", nai)
    with mtk.open(path) as model:
        analysis = analyze(model)
    assert analysis.components["CLIP-v1"] == "CLIP-v1-NAI"
    assert len(analysis.renamed_keys) == 197
    assert (
        analysis.renamed_keys["cond_stage_model.transformer.embeddings.position_ids"]
        == "cond_stage_model.transformer.text_model.embeddings.position_ids"
    )


def test_broken_models_hide_behind_complete_ones():
    detection = detect(shapes_of([e for e in SD1 if not e[0].startswith("cond_stage_model.")]))
    assert detection.candidates == ["UNET-v1-BROKEN", "VAE-v1-BROKEN"]
    assert any(
        r.name == "SD-v1" and r.reason == "Missing required classes" and r.missing == ["CLIP-v1"]
        for r in detection.rejected
    )
    complete = detect(shapes_of(SD1))
    assert complete.candidates == ["SD-v1"]


def test_rejections_say_what_is_missing():
    damaged = [e for e in SD1 if e[0] != "first_stage_model.decoder.conv_in.bias"]
    damaged = replace_shape(damaged, "first_stage_model.decoder.conv_out.bias", (4,))
    detection = detect(shapes_of(damaged))
    vae = [r for r in detection.rejected if r.name == "VAE-v1-SD"]
    assert vae[0].reason == "Missing required keys (2 of 248)"
    assert vae[0].missing == [
        "first_stage_model.decoder.conv_in.bias [512]",
        "first_stage_model.decoder.conv_out.bias [3] (found [4])",
    ]
    assert detection.resolved == "UNET-v1-BROKEN"


def test_sizes_junk_ema_and_precision_waste(tmp_path):
    entries = SD1 + EMA + SCHEDULER + [("junk.optimizer.state", (1024, 1024))]
    path = write_sparse_safetensors(tmp_path / "m.safetensors", entries, dtype="F32")
    with mtk.open(path) as model:
        analysis = analyze(model)
        total = model.nbytes
        ema = sum(
            model.tensors[n].nbytes
            for n in model.tensors
            if n.startswith("model_ema.") and n not in ("model_ema.decay", "model_ema.num_updates")
        )
    sd1_bytes = sum(4 * __import__("math").prod(s) for _, s in SD1)
    assert analysis.sizes.total == total
    assert analysis.sizes.junk == 4 * 1024 * 1024
    assert analysis.sizes.ema == ema  # decay and num_updates are allowed scheduler keys
    kept_float = sd1_bytes - 4 * 77 + 4 * 1000 * 3 + 4 * 2  # position ids are F32 here too
    assert analysis.sizes.precision_waste == (kept_float + 4 * 77) // 2
    assert (
        analysis.sizes.pruned == total - analysis.sizes.junk - ema - analysis.sizes.precision_waste
    )
    assert analysis.unknown_keys == ["junk.optimizer.state"]
    assert analysis.junk_keys == ["junk.optimizer.state"]


def test_float64_wastes_three_quarters(tmp_path):
    path = write_sparse_safetensors(tmp_path / "vae.safetensors", seed("VAE-v1-SD"), dtype="F64")
    with mtk.open(path) as model:
        analysis = analyze(model)
        assert analysis.sizes.precision_waste == model.nbytes * 3 // 4
        assert analyze(model, None).sizes.precision_waste == 0  # --precision keep


def inspect_text(*args):
    """`mtk inspect ARGS` as a user runs it: its standard output."""
    return run_mtk("inspect", *args, check=True).stdout


def mtk_json(*args):
    return json.loads(inspect_text(*args, "--json"))


def test_inspect_json_fields(tmp_path):
    path = write_sparse_safetensors(tmp_path / "sdxl.safetensors", SDXL + [("extra", (2,))])
    report = mtk_json(path, "--no-metric")
    assert report["path"] == str(path)
    assert report["format"] == "safetensors"
    assert report["architecture"] == "SD-XL"
    assert report["candidates"] == ["SD-XL"]
    assert report["components"]["CLIP-XL-AUX"] == "CLIP-XL-AUX-SD"
    assert report["unknown_keys"] == ["extra"]
    assert set(report["sizes"]) == {"total", "junk", "ema", "precision_waste", "pruned"}
    assert report["metric"] is None
    assert report["known"] == []
    assert report["fixes"] == {"renamed_keys": 0, "broken_position_ids": None}
    assert all(set(r) == {"name", "reason", "missing"} for r in report["rejected"])


def test_no_metric_reads_no_tensor_data(tmp_path, monkeypatch):
    path = write_sparse_safetensors(tmp_path / "sd1.safetensors", SD1)
    from model_toolkit.model import FileData

    def forbidden(*_args, **_kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(FileData, "preadinto", forbidden)
    monkeypatch.setattr(FileData, "mmap", property(forbidden))
    from typer.testing import CliRunner

    from model_toolkit.cli import app

    result = CliRunner().invoke(app, ["inspect", str(path), "--no-metric", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["architecture"] == "SD-v1"


def test_basic_and_advanced_reports(tmp_path):
    entries = SD1 + EMA + [("lora_unet_down.weight", (4, 320))]
    path = write_sparse_safetensors(tmp_path / "m.safetensors", entries, dtype="F32")
    basic = inspect_text(str(path), "--no-metric")
    assert "Model is 7.17 GB." in basic
    assert "Multiple model types identified: SD-v1, EMA-v1." in basic
    assert "Model type SD-v1 will be used." in basic
    assert "Model components are: UNET-v1-SD, VAE-v1-SD, CLIP-v1-SD." in basic
    assert "Contains 3.20 GB of junk data!" in basic
    assert "Wastes 1.99 GB on precision." in basic
    assert "Model can be pruned to 1.99 GB." in basic
    advanced = inspect_text(str(path), "--no-metric", "--advanced")
    assert (
        "Total keys: 1820 (7.17 GB), Useless keys: 686 (3.20 GB), Unknown keys: 1 (5.00 KB)."
        in advanced
    )
    assert "- SD-v1\n  - UNET-v1\n    - UNET-v1-SD" in advanced
    assert "Additional\n- EMA-v1" in advanced
    assert "- UNET-v1-Inpainting: Missing required keys (1 of 686)" in advanced
    assert "Unknown\n- lora_unet_down.weight [4,320]" in advanced


def test_unidentified_file_report(tmp_path):
    path = write_sparse_safetensors(tmp_path / "x.safetensors", [("a", (2,))])
    out = inspect_text(str(path))
    assert out == "Report (----/----/----)\n\nModel type could not be identified.\n"


def test_checkpoints_identify_like_safetensors(tmp_path):
    """The same detection through torch files: a LoRA .pt and a VAE .ckpt with a state_dict."""
    import torch

    lora_path = tmp_path / "lora.pt"
    torch.save({n: torch.zeros(s, dtype=torch.float16) for n, s in lora(4)}, lora_path)
    with mtk.open(lora_path) as model:
        assert analyze(model).architecture == "LoRA-v1"
    vae_path = tmp_path / "vae.ckpt"
    torch.save(
        {
            "state_dict": {n: torch.zeros(s, dtype=torch.float16) for n, s in seed("VAE-v1-SD")},
            "global_step": 1,
        },
        vae_path,
    )
    report = mtk_json(vae_path)
    assert report["format"] == "torch-zip"
    assert report["architecture"] == "VAE-v1"
    assert report["metric"]["string"] == "----/----/----"  # all-zero weights: sums of zero


def test_ema_report_mentions_the_dots(tmp_path):
    path = write_sparse_safetensors(tmp_path / "ema.safetensors", EMA)
    out = inspect_text(str(path), "--no-metric")
    assert "Model type identified as EMA-v1." in out
    assert "EMA UNET keys have their dots removed" in out


def test_each_component_is_skipped_only_when_it_cannot_match():
    """detect() skips a component whose key roots a file lacks; that is exact only if the
    roots found in the unparsed list are those of its parsed keys, and every component
    requires at least one key (one that requires none would match any file)."""
    from model_toolkit.architectures.registry import NameIndex, load_registry, root_of

    registry = load_registry()
    for component in registry.components.values():
        assert component.roots == {root_of(name) for name, _ in component.keys}, component.name
        assert component.required, component.name
        some_key = sorted(component.keys)[0][0]
        assert component.may_match(NameIndex([some_key]))
        if component.prefix:
            assert component.may_match(NameIndex([component.prefix + some_key]))
        assert not component.may_match(NameIndex(["no_such_root.weight"]))


def test_the_roots_index_is_true_to_the_lists():
    """roots.json lets start-up skip reading every list; it must say what the lists say
    (rebuild it with `python -m model_toolkit.architectures.keylists`)."""
    import json

    from model_toolkit.architectures import keylists
    from model_toolkit.architectures.registry import load_registry

    index = json.loads(keylists.ROOTS_INDEX.read_text(encoding="utf-8"))
    lists = sorted(path.stem for path in keylists.DATA.glob("*.txt"))
    raw = json.loads((keylists.DATA / "registry.json").read_text(encoding="utf-8"))
    derived = {n: s for n, s in raw["components"].items() if "derive" in s}
    entries = {keylists.derived_index_name(spec, raw) for spec in derived.values()}
    assert sorted(index) == sorted(lists + sorted(entries))
    for name in lists:
        assert set(index[name]) == set(keylists.list_roots(name)), name
        parsed = {keylists.root_of(key) for key, _ in keylists.load(name)}
        assert set(index[name]) == parsed, name
    for name, spec in derived.items():  # made by the rule from the base's keys
        keys = load_registry().components[name].keys
        entry = keylists.derived_index_name(spec, raw)
        assert set(index[entry]) == {keylists.root_of(k) for k, _ in keys}, name
