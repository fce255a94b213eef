"""prune, extract, replace, build: outputs compared bit for bit with an independent reference
that applies the original toolkit's rules in torch, one tensor at a time."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

import model_toolkit as mtk
from conftest import (
    as_bytes,
    key_list,
    peak_rss_kib,
    run_mtk,
    with_prefix,
    write_sparse_safetensors,
)
from model_toolkit.architectures import keylists
from model_toolkit.operations import build, extract, prune, replace

SD1 = key_list("Checkpoint-SD1-LDM")
SDXL = key_list("Checkpoint-SDXL-SGM")
SCHEDULER = [(n, (1000,)) for n in ("betas", "alphas_cumprod", "posterior_variance")]
EMA_UNET = with_prefix(keylists.load("UNET-v1-EMA"), "model_ema.diffusion_model")
EMA = [("model_ema.decay", ()), ("model_ema.num_updates", ())] + EMA_UNET
IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
NAI = "cond_stage_model.transformer."
STD = "cond_stage_model.transformer.text_model."


def seed(name, prefix=""):
    return with_prefix(keylists.load(name), prefix)


def random_fill(entries, every, rng, dtype=np.float32):
    """Values for every n-th tensor (the rest stay zero): normal values plus a few specials."""
    fill = {}
    for index, (name, shape) in enumerate(entries):
        if index % every == 0 and shape:
            values = (rng.standard_normal(shape) * 0.05).astype(dtype)
            flat = values.reshape(-1)
            with np.errstate(over="ignore"):  # 70000 is inf in float16: on purpose
                flat[:3] = np.array([np.nan, 1e-7, 70000.0])[: len(flat)]  # NaN, tiny, huge
            fill[name] = values
    return fill


def load(path):
    """name -> tensor, read one at a time (the files are large but mostly holes)."""
    with safe_open(path, "pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118


def reference_prune(source, kept, rename=lambda n: n, fix_clip=False, half=True):
    """The original toolkit's fix_model + prune_model, in torch, on the kept keys."""
    expected = {}
    with safe_open(source, "pt") as handle:
        for name in kept:
            tensor = handle.get_tensor(name)
            new_name = rename(name)
            if new_name.endswith("embeddings.position_ids"):
                tensor = torch.arange(77).reshape(1, 77) if fix_clip else tensor.to(torch.int64)
            elif half and tensor.dtype == torch.float32:
                tensor = tensor.half()
            expected[new_name] = tensor
    return expected


def assert_file_equals(path, expected):
    with safe_open(path, "pt") as handle:
        assert set(handle.keys()) == set(expected)
        for name, tensor in expected.items():
            got = handle.get_tensor(name)
            assert got.dtype == tensor.dtype, name
            assert tuple(got.shape) == tuple(tensor.shape), name
            assert as_bytes(got) == as_bytes(tensor), name


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory):
    """SD-v1 fp32 with EMA, scheduler buffers, junk, NAI CLIP names and broken position ids."""
    rng = np.random.default_rng(11)
    entries = [(n.replace(STD, NAI), s) for n, s in SD1] + EMA + SCHEDULER
    entries += [("first_stage_model.loss.logvar", ()), ("lora_te_text_model.alpha", ())]
    fill = random_fill(entries, 37, rng)
    ids = np.arange(77, dtype=np.float32).reshape(1, 77)
    ids[0, 76] = 75.99998
    fill[IDS.replace(STD, NAI)] = ids
    path = tmp_path_factory.mktemp("sd1") / "sd1.safetensors"
    return write_sparse_safetensors(path, entries, dtype="F32", fill=fill), entries


@pytest.mark.parametrize("fix_clip", [False, True])
def test_prune_sd1_matches_the_original(tmp_path, sd1_file, fix_clip):
    source, entries = sd1_file
    with mtk.open(source) as model:
        plan = prune(model, fix_clip=fix_clip)
        out = mtk.write_plan(plan, tmp_path / "pruned.safetensors")
    kept = [
        n
        for n, _ in entries
        if n.replace(NAI, STD) in dict(SD1)
        or n in dict(SCHEDULER)
        or n in ("model_ema.decay", "model_ema.num_updates")
    ]
    expected = reference_prune(source, kept, lambda n: n.replace(NAI, STD), fix_clip)
    assert_file_equals(out, expected)
    ids = load(out)[IDS]
    assert ids.dtype == torch.int64
    assert ids[0, 76].item() == (76 if fix_clip else 75)


def test_prune_keeps_ema_when_asked(tmp_path, sd1_file):
    source, _ = sd1_file
    with mtk.open(source) as model:
        plan = prune(model, mtk.precision_dtype("keep"), keep_ema=True)
        out = mtk.write_plan(plan, tmp_path / "ema.safetensors")
    with safe_open(out, "pt") as handle:
        names = list(handle.keys())
        assert sum(k.startswith("model_ema.diffusion_model") for k in names) == 686
        assert handle.get_tensor(EMA_UNET[0][0]).dtype == torch.float32
        history = json.loads(handle.metadata()["modeltoolkit.history"])
    assert history[-1]["op"] == "prune" and history[-1]["keep_ema"] is True


def test_prune_to_checkpoint_loads_in_torch(tmp_path):
    """A .ckpt output: torch.load(weights_only=True) gives the reference's tensors."""
    rng = np.random.default_rng(8)
    entries = seed("VAE-v1-SD", "first_stage_model.")
    source = write_sparse_safetensors(
        tmp_path / "vae.safetensors", entries, dtype="F32", fill=random_fill(entries, 3, rng)
    )
    with mtk.open(source) as model:
        out = mtk.write_plan(prune(model), tmp_path / "vae.ckpt")
    loaded = torch.load(out, weights_only=True)
    expected = reference_prune(source, [n for n, _ in entries])
    assert set(loaded["state_dict"]) == set(expected)
    for name, tensor in expected.items():
        assert as_bytes(loaded["state_dict"][name]) == as_bytes(tensor), name
    assert json.loads(loaded["modeltoolkit.history"])[-1]["op"] == "prune"


@pytest.mark.parametrize("name", ["SD-v2", "SD-XL", "LoRA", "VAE"])
def test_prune_other_architectures(tmp_path, name):
    rng = np.random.default_rng(2)
    entries = {
        "SD-v2": seed("UNET-v2-SD", "model.diffusion_model.")
        + seed("VAE-v1-SD", "first_stage_model.")
        + seed("CLIP-v2-SD", "cond_stage_model.model."),
        "SD-XL": SDXL,
        "LoRA": [
            (n, tuple(8 if d == -1 else d for d in s))
            for n, s in seed("LoRA-v1A-UNET") + seed("LoRA-v1A-CLIP")
        ],
        "VAE": seed("VAE-v1-SD"),
    }[name]
    junk = [("model.diffusion_model.junk", (3,))]
    # The big ones in fp16 (pruning then copies), the small ones in fp32 (pruning casts).
    dtype = "F16" if name in ("SD-v2", "SD-XL") else "F32"
    values = np.float16 if dtype == "F16" else np.float32
    source = write_sparse_safetensors(
        tmp_path / "in.safetensors",
        entries + junk,
        dtype=dtype,
        fill=random_fill(entries, 11, rng, values),
    )
    with mtk.open(source) as model:
        out = mtk.write_plan(prune(model), tmp_path / "out.safetensors")
    assert_file_equals(out, reference_prune(source, [n for n, _ in entries]))


def test_partial_model_keeps_unet_and_vae_with_a_warning(tmp_path):
    entries = [e for e in SD1 if not e[0].startswith("cond_stage_model.")]
    source = write_sparse_safetensors(tmp_path / "noclip.safetensors", entries)
    result = mtk_cli("prune", source, "-o", tmp_path / "out.safetensors")
    assert result.returncode == 0, result.stderr
    assert (
        "warning: noclip.safetensors is a partial model: it has only UNET-v1, VAE-v1"
        in result.stderr
    )
    with safe_open(tmp_path / "out.safetensors", "pt") as handle:
        assert set(handle.keys()) == {n for n, _ in entries}


def test_extract_ema_unet_restores_the_dots(tmp_path, sd1_file):
    source, _ = sd1_file
    with mtk.open(source) as model:
        out = mtk.write_plan(extract(model, "EMA-UNET-v1"), tmp_path / "ema.unet.safetensors")
    unet_keys = dict(keylists.load("UNET-v1-SD"))
    expected = {}
    with safe_open(source, "pt") as handle:
        for key in unet_keys:
            expected[key] = handle.get_tensor("model_ema.diffusion_model" + key.replace(".", ""))
    assert_file_equals(out, expected)
    with mtk.open(out) as extracted:
        assert mtk.analyze(extracted).architecture == "UNET-v1"


def test_extract_nai_clip_comes_out_standard(tmp_path, sd1_file):
    """A CLIP-L file as ComfyUI's CLIP loader and transformers name it: `text_model.` + the
    standard keys, no position ids (neither keeps them); it imports back with them."""
    source, _ = sd1_file
    with mtk.open(source) as model:
        out = mtk.write_plan(
            extract(model, "CLIP-v1", precision=mtk.precision_dtype("fp16")),
            tmp_path / "clip.safetensors",
        )
    clip = [NAI + k for k, _ in keylists.load("CLIP-v1-SD") if k != "embeddings.position_ids"]
    expected = reference_prune(source, clip, lambda n: "text_model." + n[len(NAI) :])
    assert_file_equals(out, expected)
    with mtk.open(out) as extracted:
        assert mtk.analyze(extracted).architecture == "CLIP-L"
        with mtk.open(source) as model:
            plan = replace(model, "CLIP-v1", extracted)
    names = {entry.name for entry in plan.entries}
    assert STD + "embeddings.position_ids" in names
    assert STD + "embeddings.token_embedding.weight" in names
    assert mtk.analyze(plan).components["CLIP-v1"] == "CLIP-v1-SD"


def test_replace_vae_from_a_full_model_then_prune_reads_each_tensor_once(
    tmp_path, sd1_file, monkeypatch
):
    """Import the VAE of another checkpoint, prune to fp16: two plans, one pass over the data."""
    target, _ = sd1_file
    rng = np.random.default_rng(4)
    donor_entries = SD1
    donor = write_sparse_safetensors(
        tmp_path / "donor.safetensors",
        donor_entries,
        dtype="F32",
        fill=random_fill(donor_entries, 5, rng),
    )
    reads: dict[str, int] = {}
    original = mtk.TensorRef.chunks

    def counting(self, *args, **kwargs):
        reads[(self.storage.where, self.name)] = reads.get((self.storage.where, self.name), 0) + 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mtk.TensorRef, "chunks", counting)
    with mtk.open(target) as model, mtk.open(donor) as other:
        plan = prune(replace(model, "VAE-v1", other))
        out = mtk.write_plan(plan, tmp_path / "swapped.safetensors")
    assert max(reads.values()) == 1
    monkeypatch.undo()
    vae = [n for n, _ in SD1 if n.startswith("first_stage_model.")]
    expected = reference_prune(donor, vae)
    rest = [n for n, _ in SD1 if not n.startswith("first_stage_model.")]
    rest += [n for n, _ in SCHEDULER] + ["model_ema.decay", "model_ema.num_updates"]
    expected.update(
        reference_prune(target, [n.replace(STD, NAI) for n in rest], lambda n: n.replace(NAI, STD))
    )
    assert_file_equals(out, expected)


def test_build_sd1_from_parts(tmp_path, sd1_file):
    source, _ = sd1_file
    with mtk.open(source) as model:
        unet = mtk.write_plan(extract(model, "UNET-v1"), tmp_path / "u.safetensors")
        vae = mtk.write_plan(extract(model, "VAE-v1"), tmp_path / "v.safetensors")
    with mtk.open(unet) as u, mtk.open(vae) as v, mtk.open(source) as full:
        plan = build("SD-v1", [("UNET-v1", u, None), ("VAE-v1", v, None), ("CLIP-v1", full, None)])
        out = mtk.write_plan(prune(plan), tmp_path / "built.safetensors")
    kept = [n for n, _ in SD1]
    expected = reference_prune(
        source, [n.replace(STD, NAI) for n in kept], lambda n: n.replace(NAI, STD)
    )
    assert_file_equals(out, expected)


mtk_cli = run_mtk


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extract", "{sd1}", "UNET-v9"], "unknown class 'UNET-v9'"),
        (["extract", "{vae}", "CLIP-v1"], "vae.safetensors does not contain a CLIP-v1"),
        (
            ["replace", "{sd1}", "--class", "CLIP-XL", "--from", "{vae}"],
            "SD-v1 cannot contain CLIP-XL",
        ),
        (
            ["replace", "{sd1}", "--class", "CLIP-v1", "--from", "{vae}"],
            "vae.safetensors does not contain a CLIP-v1",
        ),
        (["build", "SD-v1", "--part", "VAE-v1={vae}"], "SD-v1 also needs UNET-v1, CLIP-v1"),
        (["build", "SD-XL", "--part", "CLIP-v1={vae}"], "SD-XL cannot contain CLIP-v1"),
        (["prune", "{vae}", "-o", "{vae}"], "is an input; use --overwrite"),
    ],
)
def test_bad_requests_are_one_line_errors(tmp_path, sd1_file, args, message):
    vae = write_sparse_safetensors(tmp_path / "vae.safetensors", seed("VAE-v1-SD"))
    paths = {"sd1": sd1_file[0], "vae": vae}
    result = mtk_cli(*[a.format(**paths) for a in args])
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_default_names_never_overwrite(tmp_path):
    vae = write_sparse_safetensors(tmp_path / "vae.safetensors", seed("VAE-v1-SD"), dtype="F32")
    first = mtk_cli("prune", vae)
    second = mtk_cli("prune", vae, "--json")
    assert first.returncode == second.returncode == 0
    assert (tmp_path / "vae-pruned.safetensors").exists()
    summary = json.loads(second.stdout)
    assert summary["output"] == str(tmp_path / "vae-pruned(1).safetensors")
    assert summary["saved"] == summary["input_bytes"] - summary["bytes"] > 0
    extracted = mtk_cli("extract", vae, "VAE-v1")
    assert extracted.stdout.startswith(f"wrote {tmp_path / 'vae.vae.safetensors'}")


def test_safetensors_metadata_is_kept(tmp_path):
    from safetensors.torch import save_file

    source = tmp_path / "lora.safetensors"
    save_file(
        {
            n: torch.zeros(s)
            for n, s in [
                (n, tuple(4 if d == -1 else d for d in s)) for n, s in seed("LoRA-v1-UNET")
            ]
        },
        source,
        metadata={"ss_network_dim": "4", "ss_base_model_version": "sd_v1"},
    )
    assert mtk_cli("prune", source, "-o", tmp_path / "out.safetensors").returncode == 0
    with mtk.open(tmp_path / "out.safetensors") as model:
        assert model.metadata["ss_network_dim"] == "4"
        assert json.loads(model.metadata["modeltoolkit.history"])[0]["op"] == "prune"


def test_prune_memory_is_bounded(tmp_path):
    """Pruning a 7 GiB fp32 checkpoint with EMA: peak RSS stays far below the model's size."""
    source = write_sparse_safetensors(tmp_path / "big.safetensors", SD1 + EMA, dtype="F32")
    peak = peak_rss_kib("m.operations.prune(f)", source, tmp_path / "out.safetensors")
    assert peak < 300 * 1024  # KiB


def test_replace_unet_with_the_ema_copy(tmp_path, sd1_file):
    """`--component UNET-v1-EMA` for class UNET-v1: the EMA weights become the UNET."""
    source, _ = sd1_file
    with mtk.open(source) as model, mtk.open(source) as donor:
        plan = replace(model, "UNET-v1", donor, "UNET-v1-EMA")
        out = mtk.write_plan(prune(plan, mtk.precision_dtype("keep")), tmp_path / "o.safetensors")
    with safe_open(source, "pt") as src, safe_open(out, "pt") as result:
        for key, _ in keylists.load("UNET-v1-SD")[:40]:
            ema = src.get_tensor("model_ema.diffusion_model" + key.replace(".", ""))
            assert as_bytes(result.get_tensor("model.diffusion_model." + key)) == as_bytes(ema)


def test_each_front_end_says_what_to_do_in_its_own_words(tmp_path, sd1_file):
    """The library says what is wrong; the CLI names its flags, the page its controls."""
    from model_toolkit.errors import OutputExistsError
    from model_toolkit.ui.app import guarded
    from model_toolkit.ui.folders import ModelFolders
    from model_toolkit.ui.session import Session

    source, _ = sd1_file
    report = mtk_cli("inspect", source).stdout
    assert "(need --fix-clip to be fixed)" in report
    root = tmp_path / "models"
    (root / "Stable-diffusion").mkdir(parents=True)
    os.link(source, root / "Stable-diffusion" / "sd1.safetensors")
    folders = ModelFolders({"checkpoint": [root / "Stable-diffusion"]})
    session = Session(folders)
    session.fix_clip_hint = 'need the setting "Fix broken CLIP position IDs" to be fixed'
    session.load("Stable-diffusion/sd1.safetensors")
    basic, _ = session.reports()
    assert '(need the setting "Fix broken CLIP position IDs" to be fixed)' in basic
    assert "--fix-clip" not in basic

    def save_again():
        raise OutputExistsError("model.safetensors exists")

    *_, message = guarded(2)(save_again)()
    assert message == (
        "**Error:** model.safetensors exists; tick “Overwrite an existing file” to replace it"
    )


@pytest.mark.parametrize(
    ("dtype", "keys", "expected"),
    [
        ("BF16", "Flux-v1-Dev", "BF16"),  # no fp16 for a Flux: nothing to be done
        ("F32", "Flux-v1-Dev", "BF16"),  # the type Flux weights ship in (registry.json)
        ("F32", "VAE-v1-SD", "F16"),
        ("F8_E4M3", "VAE-v1-SD", "F8_E4M3"),  # narrower than 16 bits: kept
    ],
)
def test_auto_precision_keeps_a_narrow_float_type(tmp_path, dtype, keys, expected):
    """prune's default, `auto`: what prune does is what inspect's sizes said."""
    source = write_sparse_safetensors(tmp_path / "in.safetensors", seed(keys), dtype=dtype)
    with mtk.open(source) as model:
        plan = prune(model)
        waste = mtk.analyze(model, mtk.precision_dtype("auto")).sizes.precision_waste
    assert {entry.dtype.name for entry in plan.entries if entry.dtype.is_float} == {expected}
    assert (waste == 0) == (dtype == expected)
    assert json.loads(plan.metadata["modeltoolkit.history"])[-1]["precision"].startswith("auto")
