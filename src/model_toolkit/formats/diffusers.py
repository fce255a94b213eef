"""diffusers model folders: `model_index.json` and one subfolder per component (`unet/`,
`vae/`, `text_encoder/`, `transformer/` ...), each holding one weights file or its shards."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FormatError
from ..model import ModelFile
from . import open_model

SHARD = re.compile(r"-\d{5}-of-\d{5}$")


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def weight_files(folder: Path) -> list[Path]:
    """A component's weights: .safetensors if any (full precision before a `.fp16` variant),
    else the .bin files; shards all together."""
    for suffix in (".safetensors", ".bin"):
        files = sorted(p for p in folder.glob(f"*{suffix}") if p.is_file())
        plain = [p for p in files if ".fp16." not in p.name]
        if plain or files:
            return plain or files
    return []


@dataclass
class FolderModel(ModelFile):
    """The shards of one component as one model: their tensors together."""

    shards: list[ModelFile] = field(default_factory=list)

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


def open_component(folder: Path) -> FolderModel:
    files = weight_files(folder)
    if not files:
        raise FormatError(f"{folder.name}/ has no weights file")
    shards = []
    try:
        for path in files:
            shards.append(open_model(path))
    except BaseException:
        for shard in shards:
            shard.close()
        raise
    tensors = {name: ref for shard in shards for name, ref in shard.tensors.items()}
    metadata = dict(shards[0].metadata) if len(shards) == 1 else {}
    return FolderModel(folder, shards[0].format, tensors, metadata, None, shards)


def component_folders(root: Path) -> list[Path]:
    """The subfolders that hold weights, by name."""
    return [p for p in sorted(root.iterdir()) if p.is_dir() and weight_files(p)]
