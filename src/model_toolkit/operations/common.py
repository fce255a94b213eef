"""What the operations share: sources, finding a component, the fix-ups, the record.

Every operation takes an opened file or a Plan (the output of another operation), so that
operations compose without reading a tensor: only the final write does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis import POSITION_IDS, Analysis
from ..architectures.detect import resolve_class
from ..architectures.registry import Architecture, Component, load_registry
from ..dtypes import DTYPES, PRECISIONS, DType, target_dtype
from ..errors import UsageError
from ..model import Source, TensorRef
from ..plan import PlanEntry
from ..version import __version__

HISTORY_KEY = "modeltoolkit.history"


def source_name(source: Source) -> str:
    return Path(source.origin).name if source.origin else "the model"


def entries_of(source: Source) -> dict[str, PlanEntry]:
    """Every tensor of a source as a plan entry (a file's copy theirs), by name."""
    return {entry.name: entry for entry in source.entries}


def check_class(cls: str) -> None:
    registry = load_registry()
    classes = sorted({c.cls for c in registry.components.values()})
    if cls not in classes:
        raise UsageError(f"unknown class {cls!r}; classes are: {', '.join(classes)}")


@dataclass(frozen=True)
class Found:
    """A component located in a source: where its keys are and what they will be called."""

    component: Component
    prefixed: bool  # its keys carry the component's prefix in the source
    # Standing in for another class's component (registry `serving`): (that component, the
    # key prefix to remove). A CLIP-L file imported as SD-v1's CLIP.
    serving: tuple[str, str] | None = None

    @property
    def output_component(self) -> Component:
        """An EMA copy comes out as the component it copies (keys with dots); a stand-in as
        the component it stands in for."""
        registry = load_registry()
        if self.serving:
            return registry.components[self.serving[0]]
        return registry.components[self.component.ema_of or self.component.name]


def find_component(analysis: Analysis, cls: str, component: str | None, name: str) -> Found:
    """The component of class `cls` in a source: the named one, or the best one found.

    `cls` may be the class of an EMA copy's original (UNET-v1 finds UNET-v1-EMA only when named).
    """
    check_class(cls)
    registry = load_registry()
    detection = analysis.detection
    order = [detection.resolved] if detection.resolved else []
    order += [a for a in detection.found if a not in order]
    for arch in order:
        prefixed = registry.architectures[arch].prefixed
        for found_cls, members in detection.found[arch].items():
            if component is not None:
                if component not in members:
                    continue
                spec = registry.components[component]
                original = registry.components[spec.ema_of] if spec.ema_of else spec
                if cls not in (spec.cls, original.cls):
                    raise UsageError(f"{component} is a {spec.cls}, not a {cls}")
                return Found(spec, prefixed)
            if found_cls == cls:
                chosen = resolve_class(members, registry)[0]
                return Found(registry.components[chosen], prefixed)
    if component is None:  # a file of another class that can stand in for this one
        for arch in order:
            for members in detection.found[arch].values():
                for member in members:
                    if cls in registry.serving.get(member, {}):
                        prefixed = registry.architectures[arch].prefixed
                        serving = registry.serving[member][cls]
                        return Found(registry.components[member], prefixed, serving)
    wanted = component or cls
    raise UsageError(f"{name} does not contain a {wanted}")


def component_entries(
    found: Found, analysis: Analysis, entries: dict[str, PlanEntry]
) -> list[tuple[str, PlanEntry]]:
    """(key without prefix, entry) for each tensor of a found component, in source order.

    An EMA copy's keys get their dots back (`input_blocks00weight` -> `input_blocks.0.0.weight`).
    """
    component = found.component
    prefix = component.prefix if found.prefixed else ""
    wanted = {prefix + key: (key, shape) for key, shape in component.keys}
    dotted = {}
    if component.ema_of:
        dotted = {k.replace(".", ""): k for k, _ in found.output_component.keys}
    strip = found.serving[1] if found.serving else ""
    result = []
    for name, entry in entries.items():
        if name in wanted and analysis.detection.keys[name] == (name, wanted[name][1]):
            key = wanted[name][0]
            if strip and key.startswith(strip):
                key = key[len(strip) :]
            result.append((dotted.get(key, key), entry))
    if found.serving:
        # What the stand-in's naming leaves out and the class's own keeps: CLIP position ids.
        names = {key for key, _ in result}
        for key, shape in found.output_component.keys:
            if key == POSITION_IDS and key not in names:
                ids = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
                ref = TensorRef.from_array(key, ids, DTYPES["I64"])
                result.append((key, PlanEntry(key, ref, DTYPES["I64"])))
    return result


def standalone_entries(
    found: Found, pairs: list[tuple[str, PlanEntry]]
) -> list[tuple[str, PlanEntry]]:
    """A component's (key, entry) pairs renamed as a file of it alone is named where users
    load it (registry `standalone`), keys that naming does not have left out."""
    spec = found.output_component.standalone
    if spec is None:
        return pairs
    other, prefix = spec
    allowed = {name for name, _ in load_registry().components[other].keys}
    return [(prefix + key, entry) for key, entry in pairs if prefix + key in allowed]


def position_ids_entry(entry: PlanEntry, fix_clip: bool) -> PlanEntry:
    """CLIP position ids as int64, as the original toolkit writes them: rewritten to 0..76 with
    fix_clip, else the stored values converted (a float copy truncates, as torch's .to does)."""
    i64 = DTYPES["I64"]
    if fix_clip:
        ids = np.arange(entry.numel, dtype=np.int64).reshape(entry.shape)
        return PlanEntry(entry.name, TensorRef.from_array(entry.name, ids, i64), i64)
    return entry.cast_to(i64)


def finish(
    entry: PlanEntry, name: str, precision: DType | None, is_position_ids: bool, fix_clip: bool
) -> PlanEntry:
    """Rename, fix position ids, cast floats to the precision."""
    entry = entry.renamed(name)
    if is_position_ids:
        return position_ids_entry(entry, fix_clip)
    return entry.cast_to(target_dtype(entry.dtype, precision))


def record(metadata: dict[str, object], operation: dict[str, object]) -> dict[str, object]:
    """Add what was done to the `modeltoolkit.history` metadata entry (a JSON list)."""
    metadata = dict(metadata)
    history = metadata.get(HISTORY_KEY, "[]")
    try:
        steps = json.loads(history) if isinstance(history, str) else list(history)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        steps = []
    steps.append(operation)
    metadata[HISTORY_KEY] = json.dumps(steps)
    metadata["modeltoolkit.version"] = __version__
    return metadata


def precision_name(precision: DType | None) -> str:
    if precision is None:
        return "keep"
    word = next(w for w, n in PRECISIONS.items() if n == precision.name and w != "auto")
    return f"auto ({word})" if precision.narrow_only else word


def slot_prefix(arch: Architecture, cls: str, incoming: Component) -> str:
    """The prefix a part of `cls` takes in a file of `arch`: its slot's (a Flux VAE goes
    under `vae.` wherever it came from), else the incoming component's own."""
    if not arch.prefixed:
        return ""
    slot = arch.slots.get(cls)
    return load_registry().components[slot].prefix if slot else incoming.prefix
