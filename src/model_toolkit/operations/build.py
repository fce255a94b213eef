"""build: a new model of an architecture from components taken from several files."""

from __future__ import annotations

from ..analysis import analyze
from ..architectures.locate import check_class, find_component
from ..architectures.registry import load_registry
from ..dtypes import DType, target_dtype
from ..errors import MissingPartsError, UsageError
from ..model import Source
from ..plan import Plan
from .common import (
    component_entries,
    dequantized_pairs,
    entries_of,
    record,
    slot_prefix,
    source_name,
    with_companions,
)


def build(
    arch_name: str,
    parts: list[tuple[str, Source, str | None]],
    precision: DType | None = None,
    allow_partial: bool = False,
) -> Plan:
    """The original's `NEW <architecture>`: for each (class, source, component or None), the
    component from its source, under the names the architecture uses."""
    registry = load_registry()
    if arch_name not in registry.architectures:
        raise UsageError(
            f"unknown architecture {arch_name!r}; architectures are: "
            f"{', '.join(registry.architectures)}"
        )
    arch = registry.architectures[arch_name]
    given = [cls for cls, _, _ in parts]
    for cls in given:
        check_class(cls)
        if cls not in arch.all_classes:
            raise UsageError(f"{arch_name} cannot contain {cls}")
    if len(set(given)) != len(given):
        raise UsageError("each class can be given once")
    missing = [cls for cls in arch.classes if cls not in given]
    if missing and not allow_partial:
        raise MissingPartsError(f"{arch_name} also needs {', '.join(missing)}")
    planned = []
    steps = []
    for cls, source, component in parts:
        name = source_name(source)
        analysis = analyze(source)
        found = find_component(analysis.detection, cls, component, name)
        prefix = slot_prefix(arch, cls, found.output_component)
        entries = entries_of(source, analysis)
        pairs = with_companions(component_entries(found, analysis, entries), analysis, entries)
        for key, entry in dequantized_pairs(pairs, analysis, precision):
            planned.append(
                entry.renamed(prefix + key).cast_to(target_dtype(entry.dtype, precision))
            )
        steps.append({"class": cls, "component": found.component.name, "from": name})
    origin = parts[0][1].origin if parts else ""
    warnings = [f"{arch_name} is missing {', '.join(missing)}"] if missing else []
    metadata = record({}, {"op": "build", "architecture": arch_name, "parts": steps})
    return Plan(planned, metadata, origin, warnings)
