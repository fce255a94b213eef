"""Model file names: which files are models, their stems, names not yet in use, and finding
them in a tree. Shared by the CLI, autoprune, the library scan and the web UI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
# GGUF files are already quantized to their final size: autoprune leaves them where they are.
UNPRUNED_EXTENSIONS = (".gguf",)


def is_model_name(name: str) -> bool:
    """A visible file with a model extension (hidden files are ours or a download's)."""
    return not name.startswith(".") and Path(name).suffix.lower() in MODEL_EXTENSIONS


def is_prunable_name(name: str) -> bool:
    """A model file autoprune takes: any but a GGUF."""
    return is_model_name(name) and Path(name).suffix.lower() not in UNPRUNED_EXTENSIONS


def output_suffix(source: Path) -> str:
    """The format an operation writes by default: a GGUF's stays GGUF (its blocks fit nothing
    else), everything else becomes safetensors."""
    return ".gguf" if source.suffix.lower() == ".gguf" else ".safetensors"


def stem_of(name: str) -> str:
    """The name without its model extension (`model.vae.safetensors` -> `model.vae`), or
    without its last suffix for any other name."""
    lower = name.lower()
    for ext in MODEL_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


# What a file holding one component is called after: `model.vae.safetensors`.
COMPONENT_SUFFIX = {
    "UNET": "unet",
    "EMA": "unet",
    "VAE": "vae",
    "CLIP": "clip",
    "Depth": "depth",
    "ControlNet": "controlnet",
    "LoRA": "lora",
}


# Text encoders of models that have several are named by which one they are, in the words of
# ComfyUI's text_encoders/ files (clip_l, clip_g, t5xxl): else SDXL's two would be `.clip`
# and `.clip(1)`.
CLASS_SUFFIX = {
    "CLIP-XL": "clip_g",
    "CLIP-XL-AUX": "clip_l",
    "CLIP-L": "clip_l",
    "CLIP-G": "clip_g",
    "T5-XXL": "t5xxl",
}


def component_suffix(cls: str) -> str:
    """`VAE-v1` -> `vae`, `CLIP-XL-AUX` -> `clip_l`; a class without a short word keeps its
    name, lowercased."""
    if cls in CLASS_SUFFIX:
        return CLASS_SUFFIX[cls]
    return COMPONENT_SUFFIX.get(cls.split("-")[0], cls.lower())


def output_stem(operation: str, stem: str, cls: str | None = None) -> str:
    """The name (without extension) an operation's output gets unless told: `model-pruned`,
    `model.vae` (extract), `model-new-vae` (replace), `SD-v1-built` (the web UI's build),
    `model-merged` (A's name), `model-lora` (lora apply), `tuned-lora-r32` (lora extract, with
    its rank), `lora-r16` (lora resize), `lora-kohya` (lora convert). One table for the CLI and
    the web UI."""
    if operation == "prune":
        return f"{stem}-pruned"
    if operation == "build":
        return f"{stem}-built"
    if operation == "merge":
        return f"{stem}-merged"
    if operation == "lora":
        return f"{stem}-lora"
    if operation in ("lora-extract", "lora-resize", "lora-convert"):
        return f"{stem}-{cls}"  # what was made: the rank (r32) or the format (kohya)
    if cls is None:
        raise ValueError(f"{operation} names its output after a class")
    if operation == "extract":
        return f"{stem}.{component_suffix(cls)}"
    if operation == "replace":
        return f"{stem}-new-{component_suffix(cls)}"
    raise ValueError(f"no default output name for {operation!r}")


def free_name(folder: Path, stem: str, suffix: str) -> Path:
    """`stem+suffix`, else `stem(1)+suffix`, `stem(2)+suffix`, ...: a name not in use."""
    candidate = folder / f"{stem}{suffix}"
    number = 1
    while candidate.exists():
        candidate = folder / f"{stem}({number}){suffix}"
        number += 1
    return candidate


def walk_model_files(folder: Path) -> Iterator[Path]:
    """Every model file under `folder`, in name order, hidden files and folders skipped."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if is_model_name(name):
                yield Path(root) / name
