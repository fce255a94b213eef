"""The AUTOMATIC1111/Forge extension, loaded as the webui loads it, against a stand-in
`modules` package that records the callbacks (tests/webui_standin)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from conftest import run_python

ROOT = Path(__file__).parent.parent
STANDIN = Path(__file__).parent / "webui_standin"

LOAD_AND_USE = """
import json, runpy, sys
sys.path.insert(0, sys.argv[1])
runpy.run_path(sys.argv[2] + "/scripts/model_toolkit_tab.py")
from modules import script_callbacks, shared
registered = script_callbacks.registered
for callback in registered["ui_settings"]:
    callback()
labels = {
    k: [v.label, v.section, v.category_id, v.default] for k, v in shared.opts.data_labels.items()
}
[(blocks, title, elem_id)] = registered["ui_tabs"][0]()
from model_toolkit.ui.extension import webui_layout, autoprune_in_background
layout = webui_layout()
shared.opts.model_toolkit_autoprune = True
thread = autoprune_in_background()
thread.join(60)
for callback in registered["app_started"]:
    callback(None, None)
print(json.dumps({
    "counts": {k: len(v) for k, v in registered.items()},
    "labels": labels,
    "tab": [type(blocks).__name__, title, elem_id],
    "folders": {k: str(v) for k, v in layout.folders.items()},
    "inbox": str(layout.inbox),
}))
"""


def test_the_extension_registers_its_tab_settings_and_autoprune(tmp_path):
    models = tmp_path / "webui" / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Autoprune").mkdir()
    save_file({"emb_params": torch.ones(2, 768)}, models / "Autoprune" / "ti.safetensors")
    custom_vae = tmp_path / "my-vaes"
    env = {**os.environ, "STANDIN_MODELS": str(models), "STANDIN_VAE_DIR": str(custom_vae)}
    report = json.loads(run_python(LOAD_AND_USE, STANDIN, ROOT, env=env).splitlines()[-1])
    assert report["counts"] == {"ui_tabs": 1, "ui_settings": 1, "app_started": 1}
    assert report["tab"] == ["Blocks", "Model Toolkit", "model_toolkit"]
    section = ["model-toolkit", "Model Toolkit"]
    assert report["labels"]["model_toolkit_fix_clip"] == [
        "Fix broken CLIP position IDs",
        section,
        "sd",  # "Stable Diffusion", not "Uncategorized"
        False,
    ]
    assert report["labels"]["model_toolkit_autoprune"][0].startswith("Enable Autopruning")
    assert report["folders"]["vae"] == str(custom_vae.resolve())  # --vae-dir is followed
    assert report["folders"]["checkpoint"] == str((models / "Stable-diffusion").resolve())
    assert report["inbox"] == str(models / "Autoprune")
    # Autopruning at start-up filed the embedding next to models/, as the webui keeps them.
    assert (tmp_path / "webui" / "embeddings" / "ti.safetensors").is_file()
    assert not (models / "Autoprune" / "ti.safetensors").exists()


def test_without_a_fitting_ml_dtypes_install_says_so_and_the_tab_still_loads(tmp_path):
    """An ml_dtypes that fails to import (built for another numpy): install.py removes and
    reinstalls it with every requirement quoted and the host pinned, and says in one line what
    is missing when that does not help; the extension loads and its page says so too."""
    broken = tmp_path / "broken" / "ml_dtypes"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('numpy._core.multiarray failed')\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(broken.parent),
        "STANDIN_INSTALLED": "ml_dtypes",
        "STANDIN_MODELS": str(tmp_path / "webui" / "models"),
    }
    script = (
        "import runpy, sys; sys.path.insert(0, sys.argv[1]); "
        "runpy.run_path(sys.argv[2] + '/install.py'); import launch, json; "
        "print(json.dumps(launch.pip_calls))"
    )
    output = run_python(script, STANDIN, ROOT, env=env, timeout=120).splitlines()
    pip_calls = json.loads(output[-1])
    assert pip_calls[0] == 'uninstall -y "ml_dtypes"'
    assert pip_calls[1].startswith('install "ml_dtypes>=0.4" --constraint "')
    assert len(pip_calls) == 2
    assert output[:-1] == [
        "Model Toolkit: ml_dtypes is not available in this webui's environment (no version "
        "fits its packages); without it: no bf16 or fp8 (models in those precisions cannot be "
        "read or written)."
    ]
    (tmp_path / "webui" / "models" / "Stable-diffusion").mkdir(parents=True)
    tab = (
        "import sys, runpy; sys.path.insert(0, sys.argv[1]); "
        "runpy.run_path(sys.argv[2] + '/scripts/model_toolkit_tab.py')\n"
        "from modules import script_callbacks\n"
        "[(blocks, title, _)] = script_callbacks.registered['ui_tabs'][0]()\n"
        "print(title, [b.value for b in blocks.blocks.values() if 'mtk-status' == b.elem_id])"
    )
    result = run_python(tab, STANDIN, ROOT, env=env, timeout=120)
    assert "Model Toolkit" in result
    assert "BF16 and FP8 are unavailable here" in result
