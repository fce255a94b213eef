"""What keys and shapes cannot decide, said as hints with their evidence, never as certainty.

SD-v2 768-v and 512-base checkpoints have identical keys; an SDXL v-prediction model differs
from an epsilon one only by marker keys some tools add; trainers write what they trained into
the metadata. Each hint names its evidence so that users can judge it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .analysis import Analysis

# ComfyUI's SD20.model_type: the std of this bias tells v-prediction (> 0.09) from epsilon.
SD2_VPRED_KEY = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD2_VPRED_STD = 0.09
# Markers that ComfyUI and reForge read in SDXL files (NoobAI v-pred and others).
MARKERS = {
    "v_pred": "v-prediction",
    "ztsnr": "zero terminal SNR",
    "edm_vpred.sigma_max": "EDM v-prediction",
    "edm_vpred.sigma_min": "EDM v-prediction",
}
METADATA_KEYS = (
    "modelspec.architecture",
    "modelspec.prediction_type",
    "ss_base_model_version",
    "ss_v2",
    "ss_v_parameterization",
)
# What ModelSpec's prediction_type is when a marker key says it.
MARKER_PREDICTION = {"v_pred": "v", "edm_vpred.sigma_max": "v", "edm_vpred.sigma_min": "v"}


def prediction_type(names: Any, metadata: dict[str, Any]) -> str | None:
    """ModelSpec's `prediction_type` ("v", "epsilon") where the file says it: its own
    ModelSpec field, a marker key (SDXL `v_pred`), or kohya's `ss_v_parameterization`.
    None where only a guess could say it (keys alone never tell)."""
    stated = metadata.get("modelspec.prediction_type")
    if isinstance(stated, str) and stated:
        return stated
    for key, value in MARKER_PREDICTION.items():
        if key in names:
            return value
    if str(metadata.get("ss_v_parameterization", "")).lower() == "true":
        return "v"
    return None


def markers_in(names: Any) -> list[str]:
    """The marker keys a file has (ComfyUI and reForge read them in SDXL files)."""
    return [key for key in MARKERS if key in names]


# diffusers and InvokeAI guess SD-v2's prediction from the training step it was saved at.
STEP_GUESSES = {875000: "epsilon", 220000: "epsilon", 110000: "v-prediction"}


@dataclass(frozen=True)
class Hint:
    topic: str  # "prediction", "base model", ...
    value: str
    evidence: str

    def text(self) -> str:
        return f"{self.topic}: {self.value} ({self.evidence})"

    def as_dict(self) -> dict[str, str]:
        return {"topic": self.topic, "value": self.value, "evidence": self.evidence}


def header_hints(analysis: Analysis, metadata: dict[str, Any]) -> list[Hint]:
    """Hints from names and metadata only: no tensor data is read."""
    hints = []
    names = set(analysis.tensors)
    for key, meaning in MARKERS.items():
        if key in names:
            hints.append(Hint("prediction", meaning, f"the file has a `{key}` key"))
    for key in METADATA_KEYS:
        if key in metadata:
            value = metadata[key]
            text = value if isinstance(value, str) else json.dumps(value)
            hints.append(Hint("training metadata", f"{key} = {text}", "written by the trainer"))
    step = metadata.get("global_step")
    if analysis.architecture == "SD-v2" and isinstance(step, int) and step in STEP_GUESSES:
        evidence = f"global_step {step}, as diffusers and InvokeAI guess it"
        hints.append(Hint("prediction", STEP_GUESSES[step], evidence))
    hints += name_hints(analysis) + config_hints(analysis, metadata) + base_hints(analysis)
    if analysis.architecture and analysis.architecture.startswith("Flux-v1"):
        # Bare (BFL's release) or under any checkpoint prefix.
        has_guidance = any(
            name.startswith("guidance_in.") or ".guidance_in." in name for name in names
        )
        value = "dev-like (guidance distilled)" if has_guidance else "schnell-like"
        hints.append(
            Hint("variant", value, f"guidance_in is {'present' if has_guidance else 'absent'}")
        )
    return hints


def name_hints(analysis: Analysis) -> list[Hint]:
    """Variants that keys cannot tell apart, from a word of the file name (registry
    `name_hints`, by component, else by class): one hint per class found, with the word as
    its evidence."""
    import re

    from .architectures.registry import load_registry

    table = load_registry().name_hints
    name = analysis.path.replace("\\", "/").rsplit("/", 1)[-1].lower()
    found = []
    for cls, component in analysis.components.items():
        own = component.removesuffix("-Diffusers")
        for word, variant in table.get(own) or table.get(cls, ()):
            match = re.search(rf"(?<![a-z0-9]){word}(?![a-z0-9])", name)
            if match:
                evidence = f"the file name says `{match.group(0)}`; keys cannot tell"
                found.append(Hint("variant", variant, evidence))
                break
    return found


def base_hints(analysis: Analysis) -> list[Hint]:
    """Other bases whose adapters have exactly the keys this file has: a text-encoder LoRA of
    CLIP-L alone is an SD-XL, Flux.1 or SD3 LoRA, and only its trainer knows which."""
    found = alike_bases(analysis)
    if len(found) < 2:
        return []
    bases = list(dict.fromkeys(base for base, _ in found))
    value = ", ".join(bases[:-1]) + " or " + bases[-1]
    evidence = f"the same keys fit {', '.join(arch for _, arch in found)}; keys cannot tell"
    return [Hint("base model", value, evidence)]


def alike_bases(analysis: Analysis) -> list[tuple[str, str]]:
    """(base, adapter architecture) for the resolved adapter and every other one with
    exactly its keys, the resolved first; empty for a file that is no adapter."""
    from .architectures.detect import allowed_keys, resolve_class
    from .architectures.registry import load_registry

    detection = analysis.detection
    if detection.resolved is None:
        return []
    registry = load_registry()
    base = registry.architectures[detection.resolved].base
    if base is None:
        return []
    if len(detection.found) < 2:
        return [(base, detection.resolved)]

    def explained(arch: str) -> set[str]:
        chosen = {
            cls: resolve_class(members, registry, detection.matched)[:1]
            for cls, members in detection.found[arch].items()
        }
        keys = allowed_keys(arch, chosen, registry)
        return {name for name, key in detection.keys.items() if key in keys}

    mine = explained(detection.resolved)
    alike = [
        (registry.architectures[arch].base or "", arch)
        for arch in detection.found
        if arch != detection.resolved
        and registry.architectures[arch].base not in (None, base)
        and explained(arch) == mine
    ]
    return [(base, detection.resolved), *alike]


def config_hints(analysis: Analysis, metadata: dict[str, Any]) -> list[Hint]:
    """The configuration a family's files carry in their metadata (LTX-2's `config`, the
    JSON its loaders build the model from): what it says at its top level."""
    from .architectures.registry import load_registry

    table = load_registry().config_metadata
    found = []
    for cls in analysis.components:
        key = table.get(cls)
        if key is None or key not in metadata:
            continue
        value = metadata[key]
        try:
            config = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            found.append(Hint("configuration", "unreadable", f"metadata `{key}` is not JSON"))
            continue
        if isinstance(config, dict):
            shown = [f"{k}={v}" for k, v in config.items() if isinstance(v, str | int | float)]
            parts = [f"{len(config)} entries"] + shown[:6]
            if any(isinstance(v, dict) for v in config.values()):
                parts.append(
                    "sections " + ", ".join(k for k, v in config.items() if isinstance(v, dict))
                )
            text = "; ".join(parts)
        else:
            text = type(config).__name__
        found.append(
            Hint("configuration", text, f"the file's metadata `{key}` (mtk metadata shows it)")
        )
    return found


def data_hints(analysis: Analysis) -> list[Hint]:
    """Hints that read a few values: SD-v2's prediction type from one 320-float bias."""
    if analysis.architecture != "SD-v2" or SD2_VPRED_KEY not in analysis.tensors:
        return []
    import numpy as np

    from .model import read_all

    values = read_all(analysis.tensors[SD2_VPRED_KEY]).astype(np.float64)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    value = "v-prediction" if std > SD2_VPRED_STD else "epsilon"
    evidence = f"std of {SD2_VPRED_KEY.split('model.', 2)[-1]} is {std:.3f}, threshold 0.09"
    return [Hint("prediction", value, evidence + ", as ComfyUI reads it")]
