"""End to end, in a real browser: `mtk ui` on a temporary models folder, driven by Playwright
in Debian's chromium (installed by .ci/run; Playwright cannot download browsers here)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from test_ui_session import CLIP_KEY, UNET_KEY, VAE_KEY, tensor, two_models

import model_toolkit as mtk
from conftest import running_ui

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from webui_walkthrough import CHROMIUM_ARGS, Walk, build_from_exports, load, replace_vae

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)"
)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "models"
    first, other = two_models(root)
    with running_ui(root) as (port, _):
        yield f"http://127.0.0.1:{port}/", root, first, other


@pytest.fixture
def ui(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url = server[0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#mtk-source")
        yield Walk(page, tmp_path), *server[1:]
        browser.close()


def test_both_walkthroughs_click_by_click(ui):
    page, root, first, other = ui

    # Load a checkpoint and read its report.
    load(page, "Stable-diffusion/model.safetensors")
    assert "Model type identified as SD-v1" in page.text("mtk-basic")
    assert page.text("mtk-name") == "model-pruned"

    # Hard way: export its VAE, CLIP and UNET.
    page.tab("Advanced")
    assert "Architecture" in page.page.content()
    for cls, folder, suffix in (
        ("VAE-v1", "VAE", "vae"),
        ("CLIP-v1", "Components", "clip"),
        ("UNET-v1", "Components", "unet"),
    ):
        page.choose("mtk-class", cls)
        assert page.text("mtk-export-name") == f"model.{suffix}"
        page.click("mtk-export")
        page.wait_status(f"Exported {cls} to {root / folder / f'model.{suffix}.safetensors'}.")

    # Load NEW SD-v1 and import UNET, CLIP and VAE from the exported files.
    build_from_exports(page)
    assert "Model type identified as SD-v1" in page.text("mtk-basic")
    page.click("mtk-save")
    built = root / "Stable-diffusion" / "SD-v1-built.safetensors"
    page.wait_status(f"Saved {built}.")

    # The saved file, checked with the library.
    with mtk.open(built) as model:
        assert mtk.analyze(model).architecture == "SD-v1"
        assert {ref.dtype.name for ref in model.tensors.values()} == {"F16", "I64"}
    for key in (UNET_KEY, CLIP_KEY, VAE_KEY):
        assert np.array_equal(tensor(built, key), first[key]), key

    # Easy way: replace the VAE of a checkpoint with another model's.
    replace_vae(page, "Stable-diffusion/model.safetensors", "Stable-diffusion/other.safetensors")
    page.choose("mtk-precision", "FP32")
    page.wait_status("Size estimate for FP32.")
    page.page.locator("#mtk-name input, #mtk-name textarea").first.fill("model-other-vae")
    page.click("mtk-save")
    easy = root / "Stable-diffusion" / "model-other-vae.safetensors"
    page.wait_status(f"Saved {easy}.")
    assert np.array_equal(tensor(easy, VAE_KEY), other[VAE_KEY].astype(np.float32))
    assert np.array_equal(tensor(easy, UNET_KEY), first[UNET_KEY].astype(np.float32))

    # An error is a message in the page: saving again under the same name is refused.
    page.click("mtk-save")
    message = page.wait_status("Error:")
    assert "exists" in message and "Traceback" not in page.page.content()
