"""Which model tensor a LoRA layer changes: every name trainers give a model's layers.

A LoRA names a layer as its trainer saw the model: sd-scripts flattens the path
(`lora_unet_down_blocks_0_attentions_0_proj_in`), PEFT and diffusers keep the dots under a
prefix (`transformer.single_transformer_blocks.0.attn.to_q`), and the path may be in another
layout than the file's: SD-v1's kohya LoRAs use diffusers' names for the UNET, diffusers' Flux
LoRAs have `to_q`, `to_k`, `to_v` where the BFL file has one fused `qkv`. So for a model we
list every name each of its layers goes by (registry `lora_names`: prefixes per role, rules per
component) and what rows of which tensor each name stands for. Names only; no tensor is read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from ..analysis import Analysis
from ..architectures.locate import Found, component_names
from ..architectures.registry import load_registry
from ..errors import UsageError


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of a model tensor, made of part `part` of `parts` of a LoRA layer's
    rows (1 of 1 but for diffusers' swapped shift/scale halves)."""

    weight: str  # the file's tensor name
    start: int
    stop: int
    part: int = 0
    parts: int = 1
    bias: str | None = None  # the same layer's bias tensor, if the model has one


@dataclass(frozen=True)
class Layer:
    """A model layer under one of its names: where its rows are, and the shape of one row."""

    path: str  # the layer's path in that naming (without `.weight`)
    role: str  # unet, clip, clip2, t5, llm: which prefixes LoRAs give it
    pieces: tuple[Piece, ...]
    row_shape: tuple[int, ...]  # a row of the weight: (in,), (in, kh, kw), () for a norm
    renamed: bool  # the name is the other layout's (diffusers'), not the file's own

    @property
    def rows(self) -> int:
        """The layer's rows in this naming (its pieces together)."""
        return sum(p.stop - p.start for p in self.pieces)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows, *self.row_shape)

    @property
    def starts(self) -> list[int]:
        """Where each piece's rows start among the layer's rows: one after the other, or at
        its part where it is one of `parts` (a swapped half)."""
        result, at = [], 0
        for piece in self.pieces:
            result.append(piece.part * (self.rows // piece.parts) if piece.parts > 1 else at)
            at += piece.stop - piece.start
        return result


@dataclass(frozen=True)
class Part:
    """A component's tensors as the index needs them: (key without prefix, file name, shape)."""

    component: str
    cls: str
    tensors: tuple[tuple[str, str, tuple[int, ...]], ...]
    role: str | None = None  # its role, where the class does not say (a model not identified)


def model_parts(analysis: Analysis) -> list[Part]:
    """The identified components of a model and where their tensors are in the file."""
    registry = load_registry()
    detection = analysis.detection
    if detection.resolved is None:
        return []
    prefixed = registry.architectures[detection.resolved].prefixed
    parts = []
    for cls, component in detection.components.items():
        found = Found(registry.components[component], prefixed)
        located, _ = component_names(found, detection)
        tensors = tuple((key, name, tuple(analysis.tensors[name].shape)) for key, name in located)
        parts.append(Part(component, cls, tensors))
    return parts


CHECKPOINT_PREFIX = "model.diffusion_model."  # LDM/ComfyUI checkpoints' diffusion model


def trained_parts(analysis: Analysis, model_name: str) -> list[Part]:
    """The parts of a model LoRAs are trained on; a model no architecture matches is taken
    by its tensor names (a diffusion model the registry does not know), less a checkpoint's
    `model.diffusion_model.`. A file of another kind (a VAE, a LoRA) is refused in one line."""
    if analysis.architecture is None:
        tensors = tuple(
            (n.removeprefix(CHECKPOINT_PREFIX), n, tuple(t.shape))
            for n, t in analysis.tensors.items()
        )
        return [Part("", "", tensors, "unet")]
    parts = [p for p in model_parts(analysis) if role_of(p.cls) is not None]
    if not parts:
        arch = load_registry().architectures[analysis.architecture]
        word = KINDS.get(arch.kind or "", "")
        kind = f"{word} ({arch.name})" if word else arch.name
        raise UsageError(f"{model_name} is {kind}, not a model a LoRA applies to")
    return parts


KINDS = {
    "lora": "a LoRA",
    "vae": "a VAE",
    "text_encoder": "a text encoder",
    "embedding": "an embedding",
    "controlnet": "a ControlNet",
    "component": "a component",
}


def reference_parts(architecture: str) -> list[Part]:
    """An architecture's components as the registry lists them, for a LoRA without its model
    (convert): keys as file names. Per class the member with naming rules the registry
    prefers (SDXL's UNET, not its inpainting variant); else its preferred member."""
    from ..architectures.detect import resolve_class

    registry = load_registry()
    arch = registry.architectures[architecture]
    parts = []
    for cls in arch.all_classes:
        members = [c.name for c in registry.components.values() if c.cls == cls]
        members = [m for m in members if arch.allows(cls, m) and not registry.components[m].subset]
        named = [m for m in members if m in registry.lora_names.get("names", {})]
        chosen = resolve_class(named or members, registry)
        if not chosen:
            continue
        component = registry.components[chosen[0]]
        tensors = tuple((key, key, tuple(shape)) for key, shape in component.keys)
        parts.append(Part(component.name, cls, tensors))
    return parts


def role_of(cls: str) -> str | None:
    """What a class is to LoRA trainers: a diffusion model (unet), a text encoder's role, or
    nothing they train (a VAE)."""
    data = load_registry().lora_names
    if cls in data["roles"]:
        return data["roles"][cls]
    return "unet" if cls in _diffusion_classes() else None


@cache
def _diffusion_classes() -> frozenset[str]:
    registry = load_registry()
    return frozenset(
        cls
        for arch in registry.architectures.values()
        if arch.kind == "unet"
        for cls in arch.classes
    )


def layers(parts: Iterable[Part]) -> list[Layer]:
    """Every layer of the parts under each of its names: its own path and, where the
    component has rules, the other layout's (or several, splitting its rows)."""
    return [layer for group in _grouped(parts) for layer in group[1]]


STYLES = ("kohya", "diffusers", "peft")


def written_layers(parts: Iterable[Part], style: str) -> list[tuple[str, Layer]]:
    """(module name, layer) for each layer as a trainer of `style` writes it: sd-scripts
    (`lora_unet_` + the path flattened, in the layout registry `kohya_named` says), diffusers
    (`unet.`/`transformer.`, `text_encoder.`... + diffusers' path), PEFT (`base_model.model.`
    + diffusers' path; the diffusion model alone)."""
    data = load_registry().lora_names
    parts = list(parts)
    encoders = [r for r in ("clip", "clip2", "t5", "llm") if any(_role(p) == r for p in parts)]
    result = []
    for part, group in _grouped(parts):
        rule_sets = data["names"].get(part.component, [])
        other = bool(rule_sets) and (
            style != "kohya" or any(n in data["kohya_named"] for n in rule_sets)
        )
        role = _role(part)
        if role is None or not group or (role != "unet" and style == "peft"):
            continue  # a PEFT file holds one model: the diffusion model
        prefix = _written_prefix(style, role, encoders, part.cls)
        chosen = [layer for layer in group if layer.renamed == other]
        renamed_from = {piece.weight for layer in chosen for piece in layer.pieces}
        chosen += [  # layers the rules leave as they are
            layer
            for layer in group
            if other and not layer.renamed and layer.pieces[0].weight not in renamed_from
        ]
        for layer in chosen:
            name = layer.path.replace(".", "_") if style == "kohya" else layer.path
            result.append((prefix + name, layer))
    return result


def _written_prefix(style: str, role: str, encoders: list[str], cls: str) -> str:
    """sd-scripts numbers text encoders when there are several (`lora_te1_`, `lora_te2_`),
    diffusers from the second (`text_encoder_2.`); its UNETs are `unet.`, the rest
    `transformer.`."""
    if role == "unet":
        unets = load_registry().lora_names.get("diffusers_unet", [])
        return {
            "kohya": "lora_unet_",
            "diffusers": "unet." if cls in unets else "transformer.",
            "peft": "base_model.model.",
        }[style]
    n = encoders.index(role) + 1
    if style == "kohya":
        return "lora_te_" if len(encoders) == 1 else f"lora_te{n}_"
    return "text_encoder." if n == 1 else f"text_encoder_{n}."


def _role(part: Part) -> str | None:
    return part.role or role_of(part.cls)


def _grouped(parts: Iterable[Part]) -> list[tuple[Part, list[Layer]]]:
    data = load_registry().lora_names
    grouped: list[tuple[Part, list[Layer]]] = []
    for part in parts:
        result: list[Layer] = []
        grouped.append((part, result))
        role = _role(part)
        if role is None:
            continue
        rules = [rule for name in data["names"].get(part.component, []) for rule in _rules(name)]
        biases = {key: name for key, name, _ in part.tensors}
        for key, name, shape in part.tensors:
            path = _layer_path(key)
            if path is None or not shape:
                continue
            bias = biases.get(_bias_key(key))
            rows, row_shape = shape[0], tuple(shape[1:])
            own = Piece(name, 0, rows, bias=bias)
            result.append(Layer(path, role, (own,), row_shape, False))
            if rules:
                result.extend(_renamed(path, role, own, row_shape, rules))
    return grouped


def _layer_path(key: str) -> str | None:
    """A weight's layer path: `x.weight` is `x`; OpenCLIP's fused `attn.in_proj_weight` is
    a layer of its own name. Biases and other tensors are no layer."""
    if key.endswith(".weight"):
        return key[: -len(".weight")]
    if key.endswith("_weight"):
        return key
    return None


def _bias_key(key: str) -> str:
    return key[: -len("weight")] + "bias"


def _renamed(
    path: str, role: str, own: Piece, row_shape: tuple[int, ...], rules: list[tuple]
) -> list[Layer]:
    renamed = rename(path, rules)
    if isinstance(renamed, str):
        if renamed == path:
            return []
        return [Layer(renamed, role, (own,), row_shape, True)]
    rows = own.stop - own.start
    total = sum(share for _, share in renamed)
    if rows % total:
        return []  # not this layout's layer (a size the rule does not divide)
    pieces: dict[str, list[Piece]] = {}
    start = own.start
    for target, share in renamed:
        size = rows * share // total
        name, part, parts = _part_of(target)
        piece = Piece(own.weight, start, start + size, part, parts, own.bias)
        pieces.setdefault(name, []).append(piece)
        start += size
    return [Layer(name, role, tuple(ps), row_shape, True) for name, ps in pieces.items()]


PART = re.compile(r"^(.*)\[(\d+)/(\d+)\]$")


def _part_of(target: str) -> tuple[str, int, int]:
    """`norm_out.linear[1/2]`: rows part 1 of 2 of `norm_out.linear`."""
    match = PART.match(target)
    if match is None:
        return target, 0, 1
    return match.group(1), int(match.group(2)), int(match.group(3))


def rename(path: str, rules: list[tuple]) -> str | list[tuple[str, int]]:
    """The path in the other layout: each renaming rule that matches applied in turn; a
    splitting rule ends it with its names and their shares of the rows."""
    for pattern, replacement, shares in rules:
        if not pattern.search(path):
            continue
        if isinstance(replacement, str):
            path = pattern.sub(replacement, path, count=1)
            continue
        names = [pattern.sub(r, path, count=1) for r in replacement]
        return list(zip(names, shares or [1] * len(names), strict=True))
    return path


@cache
def _rules(name: str) -> tuple[tuple[re.Pattern[str], str | list[str], list[int] | None], ...]:
    data = load_registry().lora_names
    compiled = []
    for rule in data["rules"][name]:
        pattern, replacement = rule[0], rule[1]
        shares = rule[2] if len(rule) > 2 else None
        compiled.append((re.compile(pattern), replacement, shares))
    return tuple(compiled)


def flat(path: str) -> str:
    return path.replace(".", "_")


def index(found: Iterable[Layer]) -> dict[str, Layer]:
    """Every module name a LoRA may give a layer -> the layer: each role prefix with the
    path flattened (sd-scripts) or dotted (PEFT, diffusers, ai-toolkit). First one wins."""
    prefixes = load_registry().lora_names["prefixes"]
    result: dict[str, Layer] = {}
    for layer in found:
        forms = prefixes[layer.role]
        for prefix in forms["flat"]:
            result.setdefault(prefix + flat(layer.path), layer)
        for prefix in forms["dotted"]:
            result.setdefault(prefix + layer.path, layer)
    return result


def lora_side(module: str) -> str:
    """A LoRA's module name as the index has it (XLabs' `processor.qkv_lora1` is
    `img_attn.qkv`)."""
    for pattern, replacement in _lora_side():
        module = pattern.sub(replacement, module)
    return module


@cache
def _lora_side() -> tuple[tuple[re.Pattern[str], str], ...]:
    data = load_registry().lora_names
    return tuple((re.compile(p), r) for p, r in data.get("lora_side", []))


def trained(path: str) -> bool:
    """Whether trainers put a LoRA on the layer (not an embedding or projection parameter)."""
    return not any(p.search(path) for p in _not_trained())


@cache
def _not_trained() -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in load_registry().lora_names.get("not_trained", []))


def row_numel(layer: Layer) -> int:
    return math.prod(layer.row_shape)
