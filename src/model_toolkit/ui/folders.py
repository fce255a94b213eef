"""The model folders the UI may see: files are listed, read and written only inside them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..autoprune.layouts import Layout
from ..errors import UsageError
from ..filenames import MODEL_EXTENSIONS, walk_model_files

# Where each kind is saved, and which folders the Source list shows (the original listed
# checkpoints, components, VAEs and LoRAs).
LISTED_KINDS = ("checkpoint", "component", "unet", "text_encoder", "vae", "lora", "controlnet")


@dataclass
class ModelFolders:
    """kind -> folders (the first is where that kind is saved)."""

    folders: dict[str, list[Path]] = field(default_factory=dict)

    @classmethod
    def from_layouts(cls, layouts: Iterable[Layout]) -> ModelFolders:
        result = cls()
        for layout in layouts:
            for kind, folder in layout.folders.items():
                result.add(kind, folder)
        return result

    def add(self, kind: str, folder: Path) -> None:
        folder = Path(folder).resolve()
        existing = self.folders.setdefault(kind, [])
        if folder not in existing:
            existing.append(folder)

    def roots(self) -> list[Path]:
        return list(dict.fromkeys(f for folders in self.folders.values() for f in folders))

    def save_folder(self, kind: str) -> Path:
        """Where a kind is saved: its first folder (components share one folder)."""
        for candidate in (kind, "component"):
            if self.folders.get(candidate):
                return self.folders[candidate][0]
        raise UsageError(f"no folder is configured for {kind} files")

    def list_files(self) -> dict[str, Path]:
        """Display name ("Stable-diffusion/model.safetensors") -> path, for every model file in
        the listed folders (subfolders included, hidden files skipped), sorted.

        Paths are resolved, and a symbolic link whose target lies outside every model folder
        is not listed: every handler takes its paths from here, so none reads outside."""
        found: dict[str, Path] = {}
        for kind in LISTED_KINDS:
            for folder in self.folders.get(kind, []):
                if not folder.is_dir():
                    continue
                for path in walk_model_files(folder):
                    resolved = path.resolve()
                    if not self._within(resolved):
                        continue
                    label = f"{folder.name}/{path.relative_to(folder).as_posix()}"
                    found.setdefault(label, resolved)
        return dict(sorted(found.items(), key=lambda item: item[0].lower()))

    def contains(self, path: Path) -> bool:
        return self._within(Path(path).resolve())

    def _within(self, resolved: Path) -> bool:
        return any(resolved.is_relative_to(root) for root in self.roots())


def checked_name(name: str) -> str:
    """A file name typed by a user: a plain name, never a path. `.safetensors` is added when
    no known extension is given."""
    name = name.strip()
    if not name:
        raise UsageError("enter a name")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise UsageError(f"{name!r} is not a plain file name")
    if Path(name).suffix.lower() not in MODEL_EXTENSIONS:
        name += ".safetensors"
    return name
