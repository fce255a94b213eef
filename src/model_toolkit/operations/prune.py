"""prune: keep what the architecture allows, at the chosen precision, with the fixes applied."""

from __future__ import annotations

from ..analysis import analyze
from ..architectures.detect import allowed_keys
from ..architectures.registry import load_registry
from ..dtypes import AUTO, DType
from ..errors import UsageError
from ..model import Source
from ..plan import Plan
from .common import (
    dequantized,
    entries_of,
    finish,
    precision_name,
    record,
    scaled_to_fp8,
    source_name,
)


def prune(
    source: Source,
    precision: DType | None = AUTO,
    keep_ema: bool = False,
    fix_clip: bool = False,
    drop: tuple[str, ...] = (),
) -> Plan:
    """The original toolkit's Save: the resolved architecture's keys (its components' and the
    optional scheduler buffers), junk and EMA dropped (EMA kept on request), NAI CLIP names
    renamed, position ids made int64 (0..76 with fix_clip), floats cast to `precision`.

    A partial model (`*-BROKEN`) keeps every complete component found in it, with a warning.
    `drop` removes optional classes (the T5-XXL of an all-in-one Flux or SD3 file), only when
    asked: a file without its text encoders needs them from elsewhere.
    """
    name = source_name(source)
    analysis = analyze(source, precision, keep_ema)
    arch = analysis.architecture
    if arch is None:
        raise UsageError(f"{name}: model type could not be identified; nothing to prune")
    registry = load_registry()
    kept = set(analysis.kept_keys)
    warnings = []
    if registry.architectures[arch].partial:
        found = analysis.detection.found
        parts = [cls for candidate in found for cls in found[candidate]]
        for candidate, by_class in found.items():
            keys = allowed_keys(candidate, by_class, registry)
            kept |= {n for n, key in analysis.detection.keys.items() if key in keys}
        warnings.append(
            f"{name} is a partial model: it has only {', '.join(parts)}; all of them are kept"
        )
    spec = registry.architectures[arch]
    for cls in drop:
        if cls not in spec.optional_classes:
            optional = ", ".join(spec.optional_classes) or "none"
            raise UsageError(f"{arch} cannot do without {cls}; optional classes: {optional}")
        if cls in analysis.components:
            component = registry.components[analysis.components[cls]]
            dropped = allowed_keys(arch, {cls: [component.name]}, registry, {cls})
            # Its loose extras go with it (`text_encoders.t5xxl.logit_scale` beside
            # `text_encoders.t5xxl.transformer.`): the keys under the prefix's parent.
            parent = component.prefix.rstrip(".").rpartition(".")[0] + "."
            kept -= {
                n
                for n, key in analysis.detection.keys.items()
                if key in dropped or (parent != "." and n.startswith(parent))
            }
    entries = entries_of(source, analysis)
    position_ids = set(analysis.position_ids)
    chosen = dequantized([e for n, e in entries.items() if n in kept], analysis, analysis.precision)
    scaled = analysis.precision is not None and analysis.precision.scaled
    planned = [
        finish(
            entry,
            analysis.renamed_keys.get(entry.name, entry.name),
            None if scaled else analysis.precision,
            entry.name in position_ids,
            fix_clip,
        )
        for entry in chosen
    ]
    if scaled:  # the kept tensors, then fp8 with a scale per Linear weight
        planned = scaled_to_fp8(planned, analysis)
    operation = {
        "op": "prune",
        "architecture": arch,
        "precision": precision_name(analysis.precision),
        "keep_ema": keep_ema,
        "fix_clip": fix_clip,
        "dropped": list(drop),
        "from": name,
    }
    return Plan(planned, record(source.metadata, operation), source.origin, warnings)
