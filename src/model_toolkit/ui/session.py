"""The original toolkit's workflow, without any UI: load, report, import, export, save.

The gradio page (app.py) only draws this; tests drive it directly as well. A session holds
one model: a file from the model folders, or `NEW <architecture>` being built from parts.
Imports change it as plans (nothing is read until a save or an export writes).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from .. import operations
from ..analysis import Analysis, analyze
from ..architectures.registry import load_registry
from ..dtypes import DType, precision_dtype
from ..errors import ModelToolkitError, UsageError
from ..filenames import output_stem, stem_of
from ..findings import gather_findings
from ..formats import open_model
from ..model import ModelFile, Source
from ..plan import Plan
from ..report import FIX_CLIP_HINT, Findings, advanced_report, basic_report
from ..write import ProgressCallback, write_plan
from .folders import ModelFolders, checked_name
from .vetting import vet

NEW_PREFIX = "NEW "
AUTO = "auto"
# "Auto" first: a bf16 Flux stays bf16, an fp32 SD model becomes fp16 (as `mtk prune`).
UI_PRECISIONS = {
    "Auto": "auto",
    "FP16": "fp16",
    "FP32": "fp32",
    "BF16": "bf16",
    "FP8": "fp8_e4m3fn",
}


def ui_precision(label: str) -> DType | None:
    if label not in UI_PRECISIONS:
        raise UsageError(f"unknown precision {label!r}")
    return precision_dtype(UI_PRECISIONS[label])


def buildable_architectures() -> list[str]:
    """The architectures `NEW <arch>` offers: full checkpoints (their components prefixed)."""
    registry = load_registry()
    return [
        name
        for name, arch in registry.architectures.items()
        if arch.prefixed and arch.kind == "checkpoint"
    ]


@dataclass
class Part:
    cls: str
    path: Path
    component: str | None


class Session:
    """One user's model being worked on. Methods raise ModelToolkitError for bad requests."""

    def __init__(self, folders: ModelFolders, fix_clip: bool = False) -> None:
        self.folders = folders
        self.fix_clip = fix_clip
        self.fix_clip_hint = FIX_CLIP_HINT  # the front end's words for "turn fixing on"
        self.lock = threading.Lock()  # one operation at a time on this session's model
        self.label: str | None = None
        self.base: Path | None = None  # the loaded file, or None for NEW
        self.new_arch: str | None = None
        self.parts: list[Part] = []  # NEW: components imported so far; else: imports applied
        self._opened: dict[Path, ModelFile] = {}
        self._findings: Findings | None = None  # the values read, per state of the model
        self._analyses: dict[str, Analysis] = {}  # by precision label, per state of the model

    # -- what can be chosen ------------------------------------------------------------------

    def sources(self) -> list[str]:
        return list(self.folders.list_files()) + [NEW_PREFIX + a for a in buildable_architectures()]

    def path_of(self, label: str) -> Path:
        """A listed file by its label; anything else (a typed path) is refused."""
        files = self.folders.list_files()
        if label not in files:
            raise UsageError(f"{label!r} is not a file in the model folders")
        return files[label]

    # -- loading -----------------------------------------------------------------------------

    def load(self, label: str) -> None:
        self.clear()
        if label.startswith(NEW_PREFIX):
            arch = label[len(NEW_PREFIX) :]
            if arch not in buildable_architectures():
                raise UsageError(f"cannot build {arch!r}")
            self.new_arch = arch
        else:
            path = self.path_of(label)
            self._open(path)
            self.base = path
        self.label = label

    def clear(self) -> None:
        for model in self._opened.values():
            model.close()
        self._opened.clear()
        self.label = self.base = self.new_arch = None
        self.parts = []
        self._changed()

    @property
    def loaded(self) -> bool:
        return self.label is not None

    def _open(self, path: Path) -> ModelFile:
        if not self.folders.contains(path):
            raise UsageError(f"{path.name} is not in the model folders")
        if path not in self._opened:
            vet(path)  # read first where a hostile file can only cost a worker
            self._opened[path] = open_model(path)
        return self._opened[path]

    # -- the model as it stands --------------------------------------------------------------

    def current(self) -> Source:
        """The loaded file with its imports applied, or the NEW model built so far."""
        if not self.loaded:
            raise UsageError("load a model first")
        if self.new_arch is not None:
            if not self.parts:
                raise UsageError(f"import a component into NEW {self.new_arch} first")
            parts = [(p.cls, self._open(p.path), p.component) for p in self.parts]
            return operations.build(self.new_arch, parts, None, allow_partial=True)
        source: Source = self._open(self.base)  # type: ignore[arg-type]
        for part in self.parts:
            source = operations.replace(source, part.cls, self._open(part.path), part.component)
        return source

    def analysis(self, precision: str = "Auto") -> Analysis:
        """The model's analysis; one per state and precision (the page asks for it several
        times for one click: reports, architectures, components)."""
        if precision not in self._analyses:
            self._analyses[precision] = analyze(self.current(), ui_precision(precision))
        return self._analyses[precision]

    def _changed(self) -> None:
        self._findings = None
        self._analyses = {}

    def findings(self, analysis: Analysis) -> Findings:
        """The metric and what it names; computed once per state of the model (it reads data)."""
        if self._findings is None:
            self._findings = gather_findings(analysis, self.current().metadata)
        return self._findings

    def reports(self, precision: str = "Auto") -> tuple[str, str]:
        """(basic, advanced) reports, in the original's words."""
        if self.new_arch is not None and not self.parts:
            text = f"NEW {self.new_arch}: import its components (Advanced tab).\n"
            return text, text
        analysis = self.analysis(precision)
        findings = self.findings(analysis)
        basic = basic_report(analysis, findings, self.fix_clip, self.fix_clip_hint)
        return basic, advanced_report(analysis, findings)

    # -- choices for the Advanced tab ----------------------------------------------------------

    def architectures(self) -> list[str]:
        if self.new_arch is not None:
            return [self.new_arch]
        if not self.loaded:
            return []
        detection = self.analysis().detection
        resolved = [detection.resolved] if detection.resolved else []
        return resolved + [a for a in detection.found if a not in resolved]

    def classes(self, arch: str) -> list[str]:
        registry = load_registry()
        return (
            list(registry.architectures[arch].all_classes) if arch in registry.architectures else []
        )

    def components(self, arch: str, cls: str) -> list[str]:
        """`auto` and the components of `cls` found in the model under `arch`."""
        if not self.loaded or (self.new_arch is not None and not self.parts):
            return [AUTO]
        found = self.analysis().detection.found.get(arch, {})
        return [AUTO, *found.get(cls, [])]

    def import_candidates(self, cls: str) -> list[str]:
        """Files in the model folders that contain a component of `cls` (full models too)."""
        serving = load_registry().serving
        result = []
        for label, path in self.folders.list_files().items():
            found = self._header(path) or {}
            for by_class in found.values():
                members = [m for ms in by_class.values() for m in ms]
                if cls in by_class or any(cls in serving.get(m, {}) for m in members):
                    result.append(label)  # its own class, or a file that stands in for it
                    break
        return result

    def _header(self, path: Path) -> dict[str, dict[str, list[str]]] | None:
        """A file's classes by header, read in a worker process (vetting.py)."""
        if not self.folders.contains(path):
            return None
        try:
            return vet(path)
        except (OSError, ModelToolkitError):  # unreadable or unsafe files are not offered
            return None

    # -- changing it ----------------------------------------------------------------------------

    def import_component(self, cls: str, label: str, component: str = AUTO) -> None:
        """The original's Import: `cls` taken from a file (any file containing that class)."""
        if not self.loaded:
            raise UsageError("load a model first")
        path = self.path_of(label)
        chosen = None if component in ("", AUTO) else component
        part = Part(cls, path, chosen)
        previous = list(self.parts)
        self.parts = [p for p in self.parts if p.cls != cls] + [part]
        self._changed()
        try:
            self._open(path)
            self.analysis()  # refuse now, not at save time, what cannot be combined
        except Exception:
            self.parts = previous
            self._changed()
            raise

    # -- writing -------------------------------------------------------------------------------

    def stem(self) -> str:
        if self.new_arch is not None:
            return self.new_arch
        return stem_of(self.base.name) if self.base else "model"

    def suggested_name(self) -> str:
        return output_stem("prune" if self.new_arch is None else "build", self.stem())

    def suggested_export_name(self, cls: str) -> str:
        return output_stem("extract", self.stem(), cls)

    def save(
        self,
        name: str,
        precision: str = "Auto",
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """The original's Save: pruned to the precision, into the folder its kind belongs to."""
        plan = operations.prune(self.current(), ui_precision(precision), False, self.fix_clip)
        analysis = analyze(plan)
        kind = load_registry().architectures[analysis.architecture].kind  # type: ignore[index]
        return self._write(plan, kind or "component", name, overwrite, progress)

    def export(
        self,
        cls: str,
        component: str = AUTO,
        name: str = "",
        precision: str = "Auto",
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """The original's Export: one component, prefix removed, into its folder."""
        chosen = None if component in ("", AUTO) else component
        plan = operations.extract(
            self.current(), cls, chosen, ui_precision(precision), self.fix_clip
        )
        kind = "vae" if cls.startswith("VAE") else "component"
        return self._write(plan, kind, name or self.suggested_export_name(cls), overwrite, progress)

    def _write(
        self,
        plan: Plan,
        kind: str,
        name: str,
        overwrite: bool,
        progress: ProgressCallback | None,
    ) -> Path:
        folder = self.folders.save_folder(kind)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / checked_name(name)
        if target in self._opened:
            raise UsageError(f"{target.name} is open as a source; choose another name")
        return write_plan(plan, target, overwrite=overwrite, progress=progress)
