"""Analysis: what a file is and what pruning would do, from names, shapes and dtypes only.

Everything here is a pure function of the header. Facts that need tensor values (the metric,
broken position ids) are computed in metric.py, fingerprints.py and readings.py, only when
asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .architectures.detect import Detection, allowed_keys, detect
from .architectures.locate import POSITION_IDS
from .architectures.registry import Key, Registry, load_registry
from .dtypes import DTYPES, DType, auto_precision, float_bytes, target_dtype
from .model import Source, Tensor
from .quantization import QuantView, fill_open_shapes, quant_view

EMA_PREFIX = "model_ema."


@dataclass(frozen=True)
class Sizes:
    total: int
    junk: int  # not allowed by the resolved architecture, and not EMA
    ema: int  # `model_ema.*` not allowed by the resolved architecture
    precision_waste: int  # what casting the kept floats to the target precision saves
    pruned: int  # the size after pruning

    def as_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "junk": self.junk,
            "ema": self.ema,
            "precision_waste": self.precision_waste,
            "pruned": self.pruned,
        }


@dataclass
class Analysis:
    path: str  # the file analysed ("" for a plan not yet written)
    format: str  # "safetensors", "torch-zip", "torch-legacy", or "plan"
    tensors: dict[str, Tensor]  # by name, in file order
    detection: Detection
    sizes: Sizes
    kept_keys: list[str]  # allowed by the resolved architecture
    junk_keys: list[str]
    ema_keys: list[str]
    unknown_keys: list[str]  # explained by no architecture found
    useless_keys: list[str]  # explained by a found architecture, not by the resolved one
    renamed_keys: dict[str, str]  # NAI CLIP key -> its standard name
    position_ids: list[str]  # the CLIP position ids tensors of the resolved architecture
    keep_ema: bool
    precision: DType | None
    lora_ranks: list[int] = field(default_factory=list)  # the free (rank) sizes of a LoRA
    quant: QuantView | None = None  # quantized layers: companions, markers, formats
    # class -> (prefix found, prefix the architecture's files use): a part in another slot
    # (a Flux VAE under first_stage_model.), which loaders do not find there; prune moves it.
    misplaced: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def architecture(self) -> str | None:
        return self.detection.resolved

    @property
    def components(self) -> dict[str, str]:
        return self.detection.components

    def value(self, name: str) -> Tensor:
        """The tensor as its values are meant: an fp8-scaled weight times its scale (what the
        metric, fingerprints and diff read), anything else as it is stored."""
        if self.quant is None or name not in self.quant.layers:
            return self.tensors[name]
        return self.quant.value_of(name, self.tensors)

    def valued(self, entry: Any) -> Any:
        """A plan entry of one of its tensors, or in its place the value view (`value`) where
        the tensor's values are not its stored ones."""
        value = self.value(entry.name)
        return entry if value is self.tensors[entry.name] else value


def misplaced_parts(detection: Detection, registry: Registry) -> dict[str, tuple[str, str]]:
    """Parts of the resolved architecture found under another component's prefix than the one
    its files use (registry `slots`), where both components have the same keys."""
    if detection.resolved is None:
        return {}
    arch = registry.architectures[detection.resolved]
    result = {}
    for cls, slot in arch.slots.items():
        found = detection.components.get(cls)
        if not arch.prefixed or found is None or found == slot:
            continue
        have, want = registry.components[found], registry.components[slot]
        if have.key_list == want.key_list and have.prefix != want.prefix:
            result[cls] = (have.prefix, want.prefix)
    return result


def analyze(
    model: Source, precision: DType | None = DTYPES["F16"], keep_ema: bool = False
) -> Analysis:
    """Identify a file, or the output of a plan, and size what pruning to `precision` (fp16 by
    default, None: keep) would do. A plan is analysed as the file it would write, so that
    operations compose."""
    registry = load_registry()
    tensors = dict(model.tensors)
    path, file_format = model.origin, model.format
    shapes = {name: ref.shape for name, ref in tensors.items()}
    dtypes = {name: ref.dtype.name for name, ref in tensors.items()}
    quant = quant_view(shapes, dtypes, model.metadata, registry)
    if quant.quantized:  # companions set aside, weights in their layers' shapes
        detection = detect(fill_open_shapes(quant.shapes, registry), registry)
        quant.restore(detection, shapes)
    else:
        detection = detect(shapes, registry)
    if precision is not None and precision.narrow_only:  # `auto`: this model's 16-bit type
        arch = registry.architectures.get(detection.resolved or "")
        precision = auto_precision(float_bytes(tensors.values()), arch.precision if arch else "F16")
    allowed: set[Key] = set()
    known: set[Key] = set()
    for arch, by_class in detection.found.items():
        keys = allowed_keys(arch, by_class, registry)
        known |= keys
        if arch == detection.resolved:
            allowed = allowed_keys(
                arch, {c: [m] for c, m in detection.components.items()}, registry
            )

    if quant.quantized:  # a companion goes where its weight goes
        allowed |= quant.companion_keys(detection, allowed)
        known |= quant.companion_keys(detection, known)

    kept, junk, ema, unknown, useless = [], [], [], [], []
    total = junk_size = ema_size = waste = 0
    for name, ref in tensors.items():
        key = detection.keys[name]
        total += ref.nbytes
        if key not in known:
            unknown.append(name)
        elif key not in allowed:
            useless.append(name)
        if key in allowed or (keep_ema and name.startswith(EMA_PREFIX)):
            kept.append(name)
            if not quant.keeps_dtype(name):
                saved = ref.nbytes - target_dtype(ref.dtype, precision).nbytes_for(ref.numel)
                waste += max(saved, 0)
        elif name.startswith(EMA_PREFIX):
            ema.append(name)
            ema_size += ref.nbytes
        else:
            junk.append(name)
            junk_size += ref.nbytes

    # Parts under another component's prefix (NAI's CLIP without `text_model.`, a Flux VAE
    # under `first_stage_model.`) get the names the architecture's files use.
    renamed = {}
    misplaced = misplaced_parts(detection, registry)
    for cls, (found_prefix, slot_prefix) in misplaced.items():
        bare = {key for key, _ in registry.components[detection.components[cls]].keys}
        for name in kept:
            if name.startswith(found_prefix) and name[len(found_prefix) :] in bare:
                renamed[name] = slot_prefix + name[len(found_prefix) :]
    position_ids = []
    if detection.resolved:
        prefixed = registry.architectures[detection.resolved].prefixed
        for component in detection.components.values():
            spec = registry.components[component]
            if any(key == POSITION_IDS for key, _ in spec.keys):
                name = (spec.prefix if prefixed else "") + POSITION_IDS
                if name in tensors:
                    position_ids.append(name)
    sizes = Sizes(total, junk_size, ema_size, waste, total - junk_size - ema_size - waste)
    ranks = sorted(
        {
            size
            for name in kept
            for size, spec in zip(shapes[name], detection.keys[name][1], strict=False)
            if spec == -1 and len(shapes[name]) == len(detection.keys[name][1])
        }
    )
    return Analysis(
        path,
        file_format,
        tensors,
        detection,
        sizes,
        kept,
        junk,
        ema,
        unknown,
        useless,
        renamed,
        position_ids,
        keep_ema,
        precision,
        ranks,
        quant if quant.quantized else None,
        misplaced,
    )


def analyze_folder(folder: Path) -> list[dict[str, Any]]:
    """A diffusers folder, each component subfolder identified from its headers: per subfolder
    its name, architecture, components, tensor count, bytes, float dtypes, unknown keys."""
    from .errors import FormatError
    from .formats.diffusers import component_folders, is_diffusers_folder, open_component

    if not is_diffusers_folder(folder):
        raise FormatError(f"{folder} is a folder without model_index.json")
    rows = []
    for sub in component_folders(folder):
        with open_component(sub) as model:
            analysis = analyze(model)
            floats = {r.dtype.name for r in model.tensors.values() if r.dtype.is_float}
            rows.append(
                {
                    "folder": sub.name,
                    "architecture": analysis.architecture,
                    "components": analysis.components,
                    "tensors": len(model.tensors),
                    "bytes": model.nbytes,
                    "dtypes": sorted(floats),
                    "unknown_keys": len(analysis.unknown_keys),
                }
            )
    return rows
