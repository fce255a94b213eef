"""Where each kind of model file lives in the folders of AUTOMATIC1111/Forge and of ComfyUI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UnknownLayoutError, UsageError

# The kinds an architecture can have in registry.json, and where each layout keeps them. The
# first folder of a list is used; the others are older names a user's tree may have instead.
A1111_FOLDERS: dict[str, list[str]] = {
    "checkpoint": ["Stable-diffusion"],
    "vae": ["VAE"],
    "vae_approx": ["VAE-approx"],  # the webui's own folder for approximate (preview) decoders
    "lora": ["Lora"],
    "controlnet": ["ControlNet"],
    "embedding": ["../embeddings"],  # next to models/, as the webui keeps them
    "unet": ["Components"],
    "text_encoder": ["Components"],
    "component": ["Components"],
}
COMFYUI_FOLDERS: dict[str, list[str]] = {
    "checkpoint": ["checkpoints"],
    "vae": ["vae"],
    "vae_approx": ["vae_approx"],
    "lora": ["loras"],
    "controlnet": ["controlnet"],
    "embedding": ["embeddings"],
    "unet": ["diffusion_models", "unet"],
    "text_encoder": ["text_encoders", "clip"],
    "component": ["components"],
}
LAYOUTS = {
    "a1111": ("AUTOMATIC1111/Forge", A1111_FOLDERS, "Autoprune"),
    "comfyui": ("ComfyUI", COMFYUI_FOLDERS, "autoprune"),
}
KINDS = tuple(A1111_FOLDERS)
# What a layout's host loads a kind from, where it is not .safetensors: AUTOMATIC1111 and Forge
# load their preview decoders by exact name (`VAE-approx/taesd_decoder.pth`, torch.load), so
# they are filed as a torch zip that our writer makes (tensors only, no code).
SUFFIXES: dict[str, dict[str, str]] = {"a1111": {"vae_approx": ".pth"}, "comfyui": {}}


@dataclass(frozen=True)
class Layout:
    """A models folder: its inbox, and the folder each kind of file is filed into."""

    name: str  # "a1111" or "comfyui"
    root: Path
    inbox: Path
    folders: dict[str, Path] = field(default_factory=dict)  # kind -> folder

    @property
    def failed(self) -> Path:
        return self.inbox / "Failed"

    def folder_for(self, kind: str) -> Path:
        return self.folders[kind]

    def suffix_for(self, kind: str) -> str:
        """The extension a file of this kind is filed with (the host loads it so)."""
        return SUFFIXES.get(self.name, {}).get(kind, ".safetensors")


def recognise(root: Path) -> str:
    """The layout whose folders `root` has: `Stable-diffusion/` or `checkpoints/`."""
    a1111 = (root / "Stable-diffusion").is_dir()
    comfyui = (root / "checkpoints").is_dir()
    if a1111 and not comfyui:
        return "a1111"
    if comfyui and not a1111:
        return "comfyui"
    found = "both a Stable-diffusion/ and" if a1111 else "neither a Stable-diffusion/ nor"
    raise UnknownLayoutError(
        f"cannot tell the layout of {root}: it has {found} a checkpoints/ folder"
    )


def make_layout(
    root: Path,
    layout: str = "auto",
    inbox: Path | None = None,
    folders: dict[str, Path] | None = None,
) -> Layout:
    """The layout of `root`; `folders` overrides where some kinds go (the webui's --vae-dir)."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    name = recognise(root) if layout == "auto" else layout
    if name not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; use auto, a1111 or comfyui")
    _, table, inbox_name = LAYOUTS[name]
    chosen: dict[str, Path] = {}
    for kind, names in table.items():
        existing = [root / n for n in names if (root / n).is_dir()]
        chosen[kind] = (existing[0] if existing else root / names[0]).resolve()
    for kind, folder in (folders or {}).items():
        if kind not in chosen:
            raise UsageError(f"unknown kind {kind!r}; kinds are: {', '.join(KINDS)}")
        chosen[kind] = folder.resolve()
    return Layout(name, root.resolve(), (inbox or root / inbox_name).resolve(), chosen)
