"""The UI's workflow without a browser: both walk-throughs of the original README, and the
rules that keep the UI inside the model folders."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

from conftest import key_list, write_sparse_safetensors
from model_toolkit.autoprune import make_layout
from model_toolkit.errors import ModelToolkitError, OutputExistsError, UsageError
from model_toolkit.ui.folders import ModelFolders, checked_name
from model_toolkit.ui.session import Session

SD1 = key_list("Checkpoint-SD1-LDM")
VAE_KEY = "first_stage_model.decoder.conv_in.weight"
UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
CLIP_KEY = "cond_stage_model.transformer.text_model.final_layer_norm.weight"


def values(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float16)


def sd1_with(path, seed):
    """A real-shaped SD-v1 (fp16, holes) whose UNET, VAE and CLIP each have one filled tensor."""
    shapes = dict(SD1)
    fill = {
        key: values(shapes[key], seed + i) for i, key in enumerate([VAE_KEY, UNET_KEY, CLIP_KEY])
    }
    ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    fill[ids] = (np.arange(77, dtype=np.int64).reshape(1, 77), "I64")
    write_sparse_safetensors(path, SD1, "F16", fill)
    return fill


def two_models(root):
    """A models folder with model.safetensors and other.safetensors; their filled values."""
    (root / "Stable-diffusion").mkdir(parents=True)
    first = sd1_with(root / "Stable-diffusion" / "model.safetensors", 1)
    other = sd1_with(root / "Stable-diffusion" / "other.safetensors", 10)
    return first, other


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "models"
    return root, *two_models(root)


def session_for(root):
    return Session(ModelFolders.from_layouts([make_layout(root)]))


def tensor(path, name):
    with safe_open(path, "np") as handle:
        return handle.get_tensor(name)


def test_easy_way_replace_the_vae_of_a_checkpoint(models):
    root, first, other = models
    session = session_for(root)
    session.load("Stable-diffusion/other.safetensors")
    vae = session.export("VAE-v1", name=session.suggested_export_name("VAE-v1"))
    assert vae == root / "VAE" / "other.vae.safetensors"
    session.load("Stable-diffusion/model.safetensors")
    assert "VAE/other.vae.safetensors" in session.import_candidates("VAE-v1")
    session.import_component("VAE-v1", "VAE/other.vae.safetensors")
    basic, _ = session.reports()
    assert "Model type identified as SD-v1" in basic or "SD-v1 will be used" in basic
    saved = session.save("model-new-vae")
    assert saved == root / "Stable-diffusion" / "model-new-vae.safetensors"
    assert np.array_equal(tensor(saved, VAE_KEY), other[VAE_KEY])
    assert np.array_equal(tensor(saved, UNET_KEY), first[UNET_KEY])


def test_hard_way_build_from_exported_parts(models):
    root, first, other = models
    session = session_for(root)
    session.load("Stable-diffusion/model.safetensors")
    assert session.architectures()[0] == "SD-v1"
    assert session.classes("SD-v1") == ["UNET-v1", "VAE-v1", "CLIP-v1"]
    assert session.components("SD-v1", "VAE-v1") == ["auto", "VAE-v1-SD"]
    assert session.export("CLIP-v1") == root / "Components" / "model.clip.safetensors"
    assert session.export("UNET-v1") == root / "Components" / "model.unet.safetensors"
    assert "NEW SD-v1" in session.sources()
    session.load("NEW SD-v1")
    assert session.reports()[0] == "NEW SD-v1: import its components (Advanced tab).\n"
    with pytest.raises(UsageError, match="import a component into NEW SD-v1 first"):
        session.save("x")
    session.import_component("CLIP-v1", "Components/model.clip.safetensors")
    session.import_component("UNET-v1", "Components/model.unet.safetensors")
    session.import_component("VAE-v1", "Stable-diffusion/other.safetensors")
    assert session.suggested_name() == "SD-v1-built"
    saved = session.save(session.suggested_name(), precision="FP32")
    assert saved == root / "Stable-diffusion" / "SD-v1-built.safetensors"
    for key, source in ((UNET_KEY, first), (CLIP_KEY, first), (VAE_KEY, other)):
        assert np.array_equal(tensor(saved, key), source[key].astype(np.float32)), key


def test_the_ui_stays_inside_the_model_folders(models, tmp_path):
    root, _, _ = models
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    session = session_for(root)
    with pytest.raises(UsageError, match="is not a file in the model folders"):
        session.load(str(outside))
    with pytest.raises(UsageError, match="is not a file in the model folders"):
        session.load("Stable-diffusion/../../outside.safetensors")
    session.load("Stable-diffusion/model.safetensors")
    for bad in ("../evil", "a/b", "a\\b", ".hidden", "  "):
        with pytest.raises(UsageError):
            session.save(bad)
    assert checked_name("plain") == "plain.safetensors"
    assert checked_name("as.ckpt") == "as.ckpt"
    session.save("copy")
    with pytest.raises(OutputExistsError):
        session.save("copy")  # never overwritten without the explicit choice
    session.save("copy", overwrite=True)
    with pytest.raises(UsageError, match="open as a source"):
        session.save("model", overwrite=True)


def test_bad_imports_are_refused_and_change_nothing(models):
    root, _, _ = models
    session = session_for(root)
    session.load("Stable-diffusion/model.safetensors")
    with pytest.raises(ModelToolkitError):
        session.import_component("UNET-XL", "Stable-diffusion/other.safetensors")
    assert session.parts == []
    with pytest.raises(UsageError, match="load a model first"):
        Session(session.folders).save("x")
