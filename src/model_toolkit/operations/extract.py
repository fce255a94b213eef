"""extract: one component as a standalone file, its prefix removed."""

from __future__ import annotations

from ..analysis import analyze
from ..architectures.locate import POSITION_IDS, find_component
from ..dtypes import DType
from ..hints import markers_in, prediction_type
from ..model import Source
from ..plan import Plan
from .common import (
    component_entries,
    dequantized_pairs,
    entries_of,
    finish,
    precision_name,
    record,
    source_name,
    standalone_entries,
    with_companions,
)


def extract(
    source: Source,
    cls: str,
    component: str | None = None,
    precision: DType | None = None,
    fix_clip: bool = False,
) -> Plan:
    """The original's Export: the component of class `cls` (the best one, or the named one),
    keys without prefix. An EMA UNET comes out as a normal UNET, its keys' dots restored."""
    name = source_name(source)
    analysis = analyze(source, precision)
    precision = analysis.precision  # `auto` resolved for this model
    found = find_component(analysis.detection, cls, component, name)
    entries = entries_of(source, analysis)
    pairs = standalone_entries(found, component_entries(found, analysis, entries))
    pairs = dequantized_pairs(with_companions(pairs, analysis, entries), analysis, precision)
    planned = [
        finish(entry, key, precision, key.endswith(POSITION_IDS), fix_clip) for key, entry in pairs
    ]
    operation = {
        "op": "extract",
        "class": cls,
        "component": found.component.name,
        "precision": precision_name(precision),
        "from": name,
    }
    metadata = record(source.metadata, operation)
    markers = markers_in(analysis.tensors)
    if found.component.cls.startswith(("UNET", "EMA-UNET")) and markers:
        # A bare UNET loses the checkpoint's marker keys: say in its metadata what they said.
        metadata["modeltoolkit.markers"] = ", ".join(markers)
        prediction = prediction_type(analysis.tensors, source.metadata)
        if prediction:
            metadata["modelspec.prediction_type"] = prediction
    return Plan(planned, metadata, source.origin)
