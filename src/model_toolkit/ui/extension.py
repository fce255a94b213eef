"""The AUTOMATIC1111/Forge extension: the tab, the settings, autopruning at start-up.

`scripts/model_toolkit_tab.py` (loaded by the webui) calls register(). Everything the webui
provides comes from its `modules` package: the model folders (`--ckpt-dir`, `--vae-dir`, ...),
the settings, the callbacks.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from ..autoprune import Autopruner, Options
from ..autoprune.layouts import A1111_FOLDERS, Layout
from ..dtypes import ml_dtypes_module
from .folders import ModelFolders

SECTION = ("model-toolkit", "Model Toolkit")
CATEGORY = "sd"  # the webui's "Stable Diffusion" settings category
FIX_CLIP = "model_toolkit_fix_clip"
FIX_CLIP_LABEL = "Fix broken CLIP position IDs"
AUTOPRUNE = "model_toolkit_autoprune"
log = logging.getLogger("model_toolkit")


# The webui's command-line options that move a kind's folder (`--ckpt-dir`, ...).
FOLDER_OPTIONS = {
    "checkpoint": "ckpt_dir",
    "vae": "vae_dir",
    "lora": "lora_dir",
    "embedding": "embeddings_dir",
}


def webui_layout() -> Layout:
    """The webui's folders as an autoprune layout: its command-line dirs, else the
    AUTOMATIC1111 layout's folders under models/ (the one table, in autoprune/layouts.py)."""
    from modules import paths, shared  # the webui's own package

    options = shared.cmd_opts
    models = Path(paths.models_path)
    folders = {}
    for kind, names in A1111_FOLDERS.items():
        value = getattr(options, FOLDER_OPTIONS.get(kind, ""), None)
        folders[kind] = (Path(value) if value else models / names[0]).resolve()
    return Layout("a1111", models, models / "Autoprune", folders)


def setting(name: str, default: bool = False) -> bool:
    from modules import shared

    return bool(getattr(shared.opts, name, default))


def option_info(shared: Any, default: Any, label: str) -> Any:
    """A setting in our section, in the "Stable Diffusion" category where the webui has
    categories (1.7 and later, Forge): else 1.10 files it under "Uncategorized"."""
    try:
        return shared.OptionInfo(default, label, section=SECTION, category_id=CATEGORY)
    except TypeError:  # older webuis: sections only
        return shared.OptionInfo(default, label, section=SECTION)


def on_ui_settings() -> None:
    from modules import shared

    shared.opts.add_option(
        FIX_CLIP,
        option_info(shared, False, FIX_CLIP_LABEL),
    )
    shared.opts.add_option(
        AUTOPRUNE,
        option_info(
            shared,
            False,
            "Enable Autopruning (prune models in models/Autoprune at start-up and on Reload UI)",
        ),
    )


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    from .app import build_ui

    folders = ModelFolders.from_layouts([webui_layout()])
    blocks = build_ui(
        folders,
        fix_clip=lambda: setting(FIX_CLIP),
        fix_clip_hint=f'need the setting "{FIX_CLIP_LABEL}" to be fixed',
    )
    return [(blocks, "Model Toolkit", "model_toolkit")]


def autoprune_in_background() -> threading.Thread | None:
    """The same crash-safe job as `mtk autoprune`, in a thread, when the setting is on."""
    if not setting(AUTOPRUNE):
        return None
    pruner = Autopruner(webui_layout(), Options(fix_clip=setting(FIX_CLIP)))

    def run() -> None:
        try:
            for outcome in pruner.run_once():
                done = outcome.status in ("filed", "recovered")
                log.log(
                    logging.INFO if done else logging.WARNING,
                    "Model Toolkit autoprune: %s: %s -> %s",
                    outcome.file,
                    outcome.status,
                    outcome.destination or outcome.reason,
                )
        except Exception as exc:  # never take the webui down
            log.warning("Model Toolkit autoprune stopped: %s", exc)

    thread = threading.Thread(target=run, name="model-toolkit-autoprune", daemon=True)
    thread.start()
    return thread


def on_app_started(demo: Any, app: Any) -> None:
    autoprune_in_background()


def console_log() -> None:
    """Our lines in the webui's console: INFO is below Python's default level, which the
    webui keeps unless told otherwise; a handler of our own shows them without touching the
    host's logging."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def register() -> None:
    from modules import script_callbacks

    console_log()
    if ml_dtypes_module() is None:
        log.warning("Model Toolkit: ml_dtypes does not import here; BF16 and FP8 are unavailable")

    script_callbacks.on_ui_settings(on_ui_settings)
    script_callbacks.on_ui_tabs(on_ui_tabs)
    script_callbacks.on_app_started(on_app_started)
