"""replace: swap a class of a model for the one in another file (a component or a full model)."""

from __future__ import annotations

from ..analysis import analyze
from ..architectures.locate import check_class, find_component
from ..architectures.registry import load_registry
from ..dtypes import DType, dominant_float, target_dtype
from ..errors import UsageError
from ..model import Source
from ..plan import Plan
from .common import (
    component_entries,
    entries_of,
    record,
    slot_prefix,
    source_name,
    with_companions,
)


def replace(
    target: Source,
    cls: str,
    donor: Source,
    component: str | None = None,
    precision: DType | None = None,
) -> Plan:
    """The original's Import: every tensor of `target`'s class `cls` removed, the component of
    that class from `donor` added under the names `target`'s architecture uses, in the float
    type of the part it replaces (or of the model) unless `precision` says otherwise."""
    check_class(cls)
    registry = load_registry()
    target_name, donor_name = source_name(target), source_name(donor)
    target_analysis = analyze(target)
    arch_name = target_analysis.architecture
    if arch_name is None:
        raise UsageError(f"{target_name}: model type could not be identified")
    arch = registry.architectures[arch_name]
    if cls not in arch.all_classes:
        raise UsageError(f"{arch_name} cannot contain {cls}")
    donor_analysis = analyze(donor)
    found = find_component(donor_analysis.detection, cls, component, donor_name)
    incoming = found.output_component
    if incoming.cls != cls:
        raise UsageError(f"{arch_name} cannot contain {incoming.cls}")

    old = set()
    for spec in registry.components.values():
        if spec.cls == cls:
            old |= spec.keyset(arch.prefixed)
    target_entries = entries_of(target, target_analysis)
    keys = target_analysis.detection.keys
    # A removed weight's companions (its scales) go with it.
    owner = target_analysis.quant.companions if target_analysis.quant else {}
    removed = {name for name in target_entries if keys[name] in old}
    removed |= {c for c, weight in owner.items() if weight in removed}
    if target_analysis.quant is not None:  # a marker with no quantized weight left under it
        left = [w for w in target_analysis.quant.layers if w not in removed]
        for marker in target_analysis.quant.markers:
            prefix = marker.rpartition(".")[0]
            if not any(not prefix or w.startswith(prefix + ".") for w in left):
                removed.add(marker)
    kept = [entry for name, entry in target_entries.items() if name not in removed]
    old_entries = [entry for name, entry in target_entries.items() if name in removed]
    prefix = slot_prefix(arch, cls, incoming)
    donor_entries = entries_of(donor, donor_analysis)
    pairs = component_entries(found, donor_analysis, donor_entries)
    pairs = with_companions(pairs, donor_analysis, donor_entries)
    added = [entry.renamed(prefix + key) for key, entry in pairs]
    if precision is None:
        # Unless asked, the new part follows the model it goes into: an fp32 VAE put into an
        # fp16 model comes out fp16, as the part it replaces was.
        incoming_precision = dominant_float(old_entries or kept)
        added = [e.cast_to(target_dtype(e.dtype, incoming_precision)) for e in added]
    planned = [e.cast_to(target_dtype(e.dtype, precision)) for e in kept + added]
    operation = {
        "op": "replace",
        "class": cls,
        "component": found.component.name,
        "from": donor_name,
        "into": target_name,
    }
    return Plan(planned, record(target.metadata, operation), target.origin)
