"""Analysis -> the original toolkit's Basic and Advanced reports, in its words, and JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .analysis import Analysis
from .architectures.registry import load_registry
from .hints import Hint

if TYPE_CHECKING:
    from .metric import Metric

JUNK_AS_SIZE = 16 * 1024 * 1024  # below this, junk is counted in keys rather than bytes
ABBREVIATE = 5


@dataclass
class Findings:
    """What was computed beyond the header: absent (None) when not asked for."""

    metric: Metric | None = None
    known: list[str] | None = None
    broken_position_ids: dict[str, list[int]] | None = None
    lora_alphas: list[float] | None = None
    hints: list[Hint] | None = None
    fingerprints: dict[str, str] | None = None  # classes beyond the metric's three parts


def size_text(count: int) -> str:
    """Sizes as the original prints them: 1024-based, two decimals."""
    if count < 1024:
        return f"{count} Bytes"
    for unit, scale in (("KB", 1024), ("MB", 1024**2)):
        if count < scale * 1024:
            return f"{count / scale:.2f} {unit}"
    return f"{count / 1024**3:.2f} GB"


def _ids_text(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")


FIX_CLIP_HINT = "need --fix-clip to be fixed"  # the CLI's words; the web UI passes its own


def basic_report(
    analysis: Analysis,
    findings: Findings,
    fix_clip: bool = False,
    fix_clip_hint: str = FIX_CLIP_HINT,
) -> str:
    metric = findings.metric.string if findings.metric else "----/----/----"
    lines = [f"Report ({metric})", ""]
    stored = storage_text(analysis)
    if stored:
        lines += [stored, ""]
    detection = analysis.detection
    if not detection.resolved:
        lines.append("Model type could not be identified.")
        return "\n".join(lines) + "\n"
    sizes = analysis.sizes
    out = [f"Model is {size_text(sizes.total)}."]
    if len(detection.candidates) > 1:
        out.append(f"Multiple model types identified: {', '.join(detection.candidates)}.")
        out.append(f"Model type {detection.resolved} will be used.")
    else:
        out.append(f"Model type identified as {model_type(analysis)}.")
    if analysis.components:
        out.append(f"Model components are: {', '.join(analysis.components.values())}.")
    else:
        out.append("Model has no components.")
    lines += [" ".join(out), ""]
    lora = lora_text(analysis, findings)
    if lora:
        lines += [lora, ""]
    if findings.fingerprints:
        prints = ", ".join(f"{cls} {value}" for cls, value in findings.fingerprints.items())
        lines += [f"Fingerprints: {prints}.", ""]
    if findings.hints:
        lines += [f"Hint, {hint.text()}." for hint in findings.hints] + [""]

    out = []
    junk_keys = analysis.junk_keys + analysis.ema_keys
    junk_size = sizes.junk + sizes.ema
    if junk_keys:
        out.append(
            f"Contains {size_text(junk_size)} of junk data!"
            if junk_size > JUNK_AS_SIZE
            else f"Contains {len(junk_keys)} junk keys!"
        )
    else:
        out.append("Contains no junk data.")
    if analysis.ema_keys:
        out.append(f"(Of which {size_text(sizes.ema)} is EMA.)")
    if sizes.precision_waste:
        out.append(f"Wastes {size_text(sizes.precision_waste)} on precision.")
    registry = load_registry()
    notes = dict.fromkeys(registry.components[name].note for name in analysis.components.values())
    chosen = {listed for _, listed in registry.name_patterns}  # names the file chose itself
    named = ", ".join(n for n, key in analysis.detection.keys.items() if key[0] in chosen)
    out += [note.format(renamed=len(analysis.renamed_keys), named=named) for note in notes if note]
    for cls, (found, slot) in analysis.misplaced.items():
        if registry.components[analysis.components[cls]].note:
            continue  # said by its note (NAI's CLIP is "mislabelled")
        out.append(
            f"{cls} is under {found} where {analysis.architecture} files keep it under "
            f"{slot}: loaders will not find it (pruning moves it)."
        )
    for ids in (findings.broken_position_ids or {}).values():
        if ids:
            action = "will be fixed" if fix_clip else fix_clip_hint
            out.append(f"CLIP has broken position ids: {_ids_text(ids)} ({action}).")
    if any(cls.startswith("EMA-") for cls in analysis.components):
        out.append("EMA UNET keys have their dots removed; extracting the UNET restores them.")
    if registry.architectures[detection.resolved].partial:
        have = ", ".join(
            c for name in detection.candidates for c in registry.architectures[name].classes
        )
        out.append(f"Model is broken: only {have} found; pruning keeps them all.")
    lines += [" ".join(out), ""]

    if findings.known:
        lines += [" ".join(f"Uses the {name}." for name in findings.known), ""]
    if sizes.pruned < sizes.total:
        lines.append(f"Model can be pruned to {size_text(sizes.pruned)}.")
    else:
        lines.append("Model is clean, nothing to be done.")
    return "\n".join(lines) + "\n"


def _abbreviated(items: list[str], full: bool) -> list[str]:
    if full or len(items) <= ABBREVIATE:
        return items
    return [*items[:ABBREVIATE], "..."]


def advanced_report(analysis: Analysis, findings: Findings, full: bool = False) -> str:
    metric = findings.metric.string if findings.metric else "----/----/----"
    tensors = analysis.tensors
    lines = [f"Report ({metric})", "", "Statistics"]

    def total(names: list[str]) -> str:
        return f"{len(names)} ({size_text(sum(tensors[n].nbytes for n in names))})"

    stats = [f"Total keys: {total(list(tensors))}"]
    if analysis.useless_keys:
        stats.append(f"Useless keys: {total(analysis.useless_keys)}")
    if analysis.unknown_keys:
        stats.append(f"Unknown keys: {total(analysis.unknown_keys)}")
    lines += [", ".join(stats) + ".", "", "Architecture"]
    detection = analysis.detection
    if detection.resolved:
        order = [detection.resolved] + [a for a in detection.candidates if a != detection.resolved]
        for index, arch in enumerate(order):
            if index == 1:
                lines.append("Additional")
            lines.append(f"- {arch}")
            classes = detection.found[arch]
            for cls, members in classes.items():
                lines.append(f"  - {cls}")
                if arch == detection.resolved and not full:
                    members = [detection.components[cls]]
                lines += [f"    - {m}" for m in members]
    else:
        lines.append("- NONE")
    if detection.rejected:
        lines += ["", "Rejected"]
        for rejection in detection.rejected:
            lines.append(f"- {rejection.name}: {rejection.reason}")
            lines += [f"  - {item}" for item in _abbreviated(rejection.missing, full)]
    if analysis.unknown_keys:
        lines += ["", "Unknown"]
        unknown = [
            f"{n} [{','.join(map(str, tensors[n].shape))}]" for n in sorted(analysis.unknown_keys)
        ]
        lines += [f"- {item}" for item in _abbreviated(unknown, full)]
    return "\n".join(lines) + "\n"


def storage_types(analysis: Analysis) -> dict[str, dict[str, int]]:
    """Tensors and bytes per stored type, largest first: a quantized file's make-up."""
    types: dict[str, dict[str, int]] = {}
    for ref in analysis.tensors.values():
        row = types.setdefault(ref.dtype.name, {"tensors": 0, "bytes": 0})
        row["tensors"] += 1
        row["bytes"] += ref.nbytes
    return dict(sorted(types.items(), key=lambda item: -item[1]["bytes"]))


def storage_text(analysis: Analysis) -> str:
    """`Stored as Q4_K: 812 tensors, 6.10 GB; F32: 304 tensors, 40.00 MB.`, for GGUF files and
    others with block-quantized tensors."""
    quantized = any(t.dtype.quantized for t in analysis.tensors.values())
    if analysis.format != "gguf" and not quantized and analysis.quant is None:
        return ""
    parts = [
        f"{name}: {row['tensors']} tensors, {size_text(row['bytes'])}"
        for name, row in storage_types(analysis).items()
    ]
    text = f"Stored as {'; '.join(parts)}." if parts else ""
    if analysis.quant is not None:
        layers = "; ".join(f"{form}: {n}" for form, n in analysis.quant.formats().items())
        text += f" Quantized layers: {layers}."
    return text.strip()


def lora_text(analysis: Analysis, findings: Findings) -> str:
    """`LoRA for SD-XL: rank 16, alpha 8.` (alpha only when tensor values were read)."""
    arch = analysis.architecture
    base = load_registry().architectures[arch].base if arch else None
    if not base:
        return ""
    components = load_registry().components
    families = [components[name].family for name in analysis.components.values()]
    family = next((f for f in families if f), "LoRA")
    if arch and arch.startswith(("Embedding-", "ControlNet-", "T2I-")):
        family = arch.split("-")[0]
    ranks = "/".join(map(str, analysis.lora_ranks)) or "unknown"
    if family == "LoKr":  # its free sizes are Kronecker factors, not a rank
        text = f"LoKr for {base}"
    elif family == "Embedding":
        text = f"Embedding for {base}: {ranks} vectors"
    elif family in ("ControlNet", "T2I"):
        text = f"{arch} for {base}"
    else:
        text = f"{family} for {base}: rank {ranks}"
    if findings.lora_alphas:
        text += ", alpha " + "/".join(f"{a:g}" for a in findings.lora_alphas)
    return text + "."


def model_type(analysis: Analysis) -> str:
    """The resolved architecture, with the variant its component names where the registry
    says the name alone says too little (`Flux-v1 (Flux-v1-Dev)`)."""
    resolved = analysis.detection.resolved or ""
    arch = load_registry().architectures.get(resolved)
    if arch is not None and arch.variant_named and len(analysis.components) == 1:
        [component] = analysis.components.values()
        return f"{resolved} ({component})"
    return resolved


def as_json(analysis: Analysis, findings: Findings) -> dict[str, Any]:
    detection = analysis.detection
    broken = findings.broken_position_ids
    base = load_registry().architectures[detection.resolved].base if detection.resolved else None
    return {
        "path": analysis.path,
        "format": analysis.format,
        "architecture": detection.resolved,
        "candidates": detection.candidates,
        "components": detection.components,
        "rejected": [
            {"name": r.name, "reason": r.reason, "missing": r.missing} for r in detection.rejected
        ],
        "unknown_keys": analysis.unknown_keys,
        "sizes": analysis.sizes.as_dict(),
        "storage": storage_types(analysis),
        "quantized_layers": analysis.quant.formats() if analysis.quant else {},
        "metric": findings.metric.as_dict() if findings.metric else None,
        "known": findings.known or [],
        "hints": [hint.as_dict() for hint in findings.hints or []],
        "fingerprints": findings.fingerprints,
        "lora": {"base": base, "ranks": analysis.lora_ranks, "alphas": findings.lora_alphas}
        if base
        else None,
        "fixes": {
            "renamed_keys": len(analysis.renamed_keys),
            "broken_position_ids": None
            if broken is None
            else sorted({i for ids in broken.values() for i in ids}),
        },
    }
