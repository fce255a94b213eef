"""The by-hand check in a real AUTOMATIC1111 or Forge, driven in a browser: install the
extension from its URL, apply and restart, both README walk-throughs in the Model Toolkit tab,
then autoprune on Reload UI. Not a test (it needs a running webui, which needs torch and the
repositories it clones); a record of what was clicked, with a screenshot after each step.

    python scripts/webui_walkthrough.py --url http://127.0.0.1:7860/ --models WEBUI/models \\
        --install-url /path/to/this/repository --shots /tmp/shots

The models folder must hold Stable-diffusion/model.safetensors and other.safetensors (two SD-v1
checkpoints; `python scripts/webui_walkthrough.py --make-models --models WEBUI/models` writes
sparse ones). Needs this package, Playwright and Debian's chromium, as the browser test does.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Walk:
    """The webui page, with a numbered screenshot after each step."""

    def __init__(self, page, shots: Path) -> None:
        self.page = page
        self.shots = shots
        self.step = 0

    def shot(self, what: str) -> None:
        self.step += 1
        name = f"{self.step:02d}-{re.sub(r'[^a-z0-9]+', '-', what.lower()).strip('-')}.png"
        self.page.screenshot(path=str(self.shots / name), full_page=True)
        print(f"step {self.step}: {what}", flush=True)

    def tab(self, name: str) -> None:
        tabs = self.page.get_by_role("tab", name=name, exact=True)
        tabs.locator("visible=true").first.click()
        self.page.wait_for_timeout(500)

    def choose(self, elem_id: str, label: str) -> None:
        self.page.locator(f"#{elem_id} input").first.click()
        option = self.page.locator("ul[role=listbox] li, ul.options li").filter(
            has_text=re.compile(rf"^\W*{re.escape(label)}\s*$")
        )
        option.first.click()
        self.page.wait_for_timeout(300)

    def click(self, elem_id: str) -> None:
        self.page.locator(f"#{elem_id}").first.click()

    def status(self) -> str:
        return self.page.locator("#mtk-status").first.inner_text()

    def text(self, elem_id: str) -> str:
        return self.page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()

    def wait_status(self, text: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.status()
            if text in current:
                return current
            if "Error:" in current and "Error:" not in text:
                break
            self.page.wait_for_timeout(250)
        self.shot("failure")
        raise AssertionError(f"status is {self.status()!r}, waited for {text!r}")


def wait_for_server(url: str, timeout: float = 600, down_first: bool = False) -> None:
    """Until the webui answers (after it went away, when `down_first`)."""
    deadline = time.monotonic() + timeout
    seen_down = not down_first
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            if seen_down:
                return
        except OSError:
            seen_down = True
        time.sleep(1)
    raise SystemExit(f"{url} did not come back")


def install(walk: Walk, url: str, install_url: str) -> None:
    walk.tab("Extensions")
    walk.tab("Install from URL")
    walk.page.get_by_label("URL for extension's git repository").fill(install_url)
    walk.page.get_by_role("button", name="Install", exact=True).click()
    walk.page.get_by_text("Installed into").first.wait_for(timeout=600_000)
    walk.shot("installed from URL")
    walk.tab("Installed")
    walk.page.get_by_role("button", name=re.compile("Apply and (restart UI|quit)")).click()
    wait_for_server(url, down_first=True)
    walk.page.goto(url)
    walk.page.get_by_role("tab", name="Model Toolkit").first.wait_for(timeout=300_000)
    walk.shot("restarted with the tab")


# The README's walk-throughs, step by step: the browser test (tests/test_ui_browser.py) runs the
# same steps against `mtk ui`, this script against a real webui.


def load(walk: Walk, source: str) -> None:
    walk.choose("mtk-source", source)
    walk.click("mtk-load")
    walk.wait_status(f"Loaded {source}.")


def import_part(walk: Walk, cls: str, label: str) -> None:
    walk.choose("mtk-class", cls)
    walk.choose("mtk-import-from", label)
    walk.click("mtk-import")
    walk.wait_status(f"Imported {cls} from {label}.")


def build_from_exports(walk: Walk) -> None:
    """The hard way's second half: NEW SD-v1 from the exported UNET, CLIP and VAE."""
    walk.click("mtk-refresh")
    walk.wait_status("Refreshed")
    load(walk, "NEW SD-v1")
    walk.tab("Advanced")
    import_part(walk, "UNET-v1", "Components/model.unet.safetensors")
    import_part(walk, "CLIP-v1", "Components/model.clip.safetensors")
    import_part(walk, "VAE-v1", "VAE/model.vae.safetensors")


def replace_vae(walk: Walk, model: str, donor: str) -> None:
    """The easy way: a checkpoint's VAE from another file."""
    load(walk, model)
    walk.tab("Advanced")
    import_part(walk, "VAE-v1", donor)


def walkthroughs(walk: Walk, models: Path) -> None:
    walk.tab("Model Toolkit")
    load(walk, "Stable-diffusion/model.safetensors")
    assert "Model type identified as SD-v1" in walk.text("mtk-basic"), walk.text("mtk-basic")
    walk.shot("loaded, basic report")

    # The hard way: export CLIP, UNET and VAE, then build NEW SD-v1 from them.
    walk.tab("Advanced")
    for cls in ("VAE-v1", "CLIP-v1", "UNET-v1"):
        walk.choose("mtk-class", cls)
        walk.click("mtk-export")
        print("  ", walk.wait_status(f"Exported {cls} to"), flush=True)
    walk.shot("exported three parts")
    build_from_exports(walk)
    walk.shot("built from parts")
    walk.click("mtk-save")
    print("  ", walk.wait_status("Saved"), flush=True)
    walk.shot("saved the built model")

    replace_vae(walk, "Stable-diffusion/model.safetensors", "Stable-diffusion/other.safetensors")
    walk.page.locator("#mtk-name input, #mtk-name textarea").first.fill("model-other-vae")
    walk.click("mtk-save")
    print("  ", walk.wait_status("Saved"), flush=True)
    walk.click("mtk-save")
    print("  ", walk.wait_status("Error:"), flush=True)
    walk.shot("replaced the VAE; saving again is refused")
    for name in ("SD-v1-built.safetensors", "model-other-vae.safetensors"):
        assert (models / "Stable-diffusion" / name).is_file(), name


def autoprune_on_reload(walk: Walk, url: str, models: Path) -> None:
    """Enable Autopruning, drop the demo model (a bloated SD-v1) into models/Autoprune, Reload UI:
    it must be filed into Stable-diffusion, pruned."""
    import subprocess

    walk.tab("Settings")
    walk.page.locator("#settings").get_by_text("Model Toolkit", exact=True).first.click()
    walk.page.wait_for_timeout(500)
    box = walk.page.locator("#setting_model_toolkit_autoprune input[type=checkbox]")
    if not box.is_checked():
        box.check()
    walk.shot("settings section, autopruning ticked")
    walk.click("settings_submit")
    walk.page.wait_for_timeout(2000)
    inbox = models / "Autoprune"
    inbox.mkdir(exist_ok=True)
    bloated = inbox / "demo.safetensors"
    subprocess.run([sys.executable, "-m", "model_toolkit", "demo", str(bloated)], check=True)
    walk.click("settings_restart_gradio")
    wait_for_server(url, down_first=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (inbox / bloated.name).exists():
        time.sleep(2)
    walk.page.goto(url)
    walk.shot("after Reload UI")
    print("   inbox now:", sorted(p.name for p in inbox.iterdir()), flush=True)
    print("   checkpoints:", sorted(p.name for p in (models / "Stable-diffusion").iterdir()))


def make_models(models: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_ui_session import two_models

    two_models(models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--install-url")
    parser.add_argument("--autoprune", action="store_true", help="then autoprune on Reload UI")
    parser.add_argument("--shots", type=Path, default=Path("walkthrough-shots"))
    parser.add_argument("--only-autoprune", action="store_true")
    parser.add_argument("--make-models", action="store_true")
    args = parser.parse_args()
    if args.make_models:
        make_models(args.models)
        return
    from playwright.sync_api import sync_playwright

    args.shots.mkdir(parents=True, exist_ok=True)
    wait_for_server(args.url)
    with sync_playwright() as playwright:
        chromium = "/usr/bin/chromium"
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(args.url)
        walk = Walk(page, args.shots)
        walk.shot("webui started")
        if args.install_url:
            install(walk, args.url, args.install_url)
        if not args.only_autoprune:
            walkthroughs(walk, args.models)
        if args.autoprune or args.only_autoprune:
            autoprune_on_reload(walk, args.url, args.models)
        browser.close()
    print("walk-through done", flush=True)


if __name__ == "__main__":
    main()
