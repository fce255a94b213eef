"""lora convert: a LoRA in another trainer's names (sd-scripts, diffusers, PEFT), exactly.

The LoRA's base (as identified) gives the model's layers from the registry's lists; each of
the LoRA's layers is located there (lora/names.py) and written under the names the target
style gives that model layer. Where the layouts cut a layer differently the factors are cut
with it, with no loss: BFL's fused `qkv` LoRA becomes `to_q`, `to_k`, `to_v` LoRAs with the
same `down` and a third of `up` each; three diffusers LoRAs become one fused LoRA of their
ranks together (their `down`s stacked, their `up`s side by side, zeros elsewhere), their
scales then in `up` and alpha its rank. diffusers and PEFT files have no alpha: the scale goes
into `up` (lora_B). LoHa, LoKr and DoRA layers are renamed where the cut is the same, refused
where it is not.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..analysis import analyze
from ..dtypes import DType
from ..errors import UsageError
from ..hints import alike_bases
from ..lora.adapters import Module, f32, modules_of
from ..lora.names import STYLES, Layer, index, layers, lora_side, reference_parts, written_layers
from ..model import Source, TensorRef
from ..plan import Plan, PlanEntry, convert_values
from .common import record, source_name

PART_NAMES = {  # a part's tensor name in each style
    "kohya": {"down": "lora_down.weight", "up": "lora_up.weight"},
    "diffusers": {"down": "lora_A.weight", "up": "lora_B.weight"},
    "peft": {"down": "lora_A.weight", "up": "lora_B.weight"},
}


def lora_convert(lora: Source, style: str, precision: DType | None = None) -> Plan:
    """The LoRA in `style`'s names (kohya, diffusers or peft)."""
    if style not in STYLES:
        raise UsageError(f"unknown LoRA format {style!r}; use {', '.join(STYLES)}")
    name = source_name(lora)
    analysis = analyze(lora, None)
    bases = alike_bases(analysis)
    if not bases:
        raise UsageError(f"{name} is not a LoRA this toolkit identifies; convert needs its base")
    modules, others = modules_of(dict(lora.tensors), name)
    problems = []
    for base in dict.fromkeys(base for base, _ in bases):  # the identified base first
        parts = reference_parts(base)
        try:
            sources = _located(modules, parts, name, base)
            break
        except UsageError as exc:  # keys alike, shapes or layers not: another base's
            problems.append(str(exc))
    else:
        raise UsageError(problems[0])
    entries: list[PlanEntry] = []
    used: set[str] = set()
    for out_name, out_layer in written_layers(parts, style):
        weight = out_layer.pieces[0].weight
        found = [(m, layer) for m, layer in sources.get(weight, []) if _overlap(layer, out_layer)]
        if not found:
            continue
        entries += _converted(out_name, out_layer, found, style, precision)
        used.update(m.name for m, _ in found)
    left = sorted(set(modules) - used)
    if left and style == "peft":
        raise UsageError(
            f"{name}: a PEFT file holds one model, and layer {left[0]} is a text encoder's; "
            "use --to diffusers"
        )
    if left:
        raise UsageError(f"{name}: layer {left[0]} has no name in {style}'s format")
    for other in others:  # what is no layer (sd-scripts' bundled embeddings) stays as it is
        ref = lora.tensors[other]
        entries.append(PlanEntry(other, ref, ref.dtype))  # type: ignore[arg-type]
    operation = {"op": "lora-convert", "to": style, "base": base}
    return Plan(entries, record(dict(lora.metadata), operation), lora.origin)


def _located(
    modules: dict[str, Module], parts: list, name: str, base: str
) -> dict[str, list[tuple[Module, Layer]]]:
    """Model tensor -> the LoRA layers that change it, each with its model layer."""
    named = index(layers(parts))
    sources: dict[str, list[tuple[Module, Layer]]] = defaultdict(list)
    for module in modules.values():
        layer = named.get(lora_side(module.name))
        if layer is None:
            raise UsageError(f"{name}: layer {module.name} is not a layer of {base}")
        module.check_fits(layer.shape)
        if module.bias_rows(0, 1) is not None:
            raise UsageError(f"{name}: layer {module.name} changes a bias; not converted")
        for weight in dict.fromkeys(p.weight for p in layer.pieces):
            sources[weight].append((module, layer))
    return sources


def _overlap(a: Layer, b: Layer) -> bool:
    return any(
        p.weight == q.weight and p.start < q.stop and q.start < p.stop
        for p in a.pieces
        for q in b.pieces
    )


def _row_map(layer: Layer) -> dict[tuple[str, int], int]:
    """(tensor, row) -> the layer's own row, for each row the layer covers."""
    mapping = {}
    for piece, start in zip(layer.pieces, layer.starts, strict=True):
        for i, row in enumerate(range(piece.start, piece.stop)):
            mapping[(piece.weight, row)] = start + i
    return mapping


def _converted(
    out_name: str,
    out_layer: Layer,
    found: list[tuple[Module, Layer]],
    style: str,
    precision: DType | None,
) -> list[PlanEntry]:
    """The output layer `out_name` made of the source layers that change its rows."""
    out_rows = _row_map(out_layer)
    first = found[0][0]
    dtype = precision or first.parts[next(iter(first.parts))].dtype
    same_cut = len(found) == 1 and _row_map(found[0][1]) == out_rows
    if any(m.family != "lora" or "mid" in m.parts or "magnitude" in m.parts for m, _ in found):
        if not same_cut:
            raise UsageError(
                f"{first.name} is {first.label}, cut otherwise in {style}'s names: not converted"
            )
        return _renamed(out_name, first, style, dtype)
    ups, downs, ranks = [], [], []
    for module, layer in found:
        up = f32(module.parts["up"]).reshape(module.parts["up"].shape[0], -1)
        source_rows = _row_map(layer)
        block = np.zeros((out_layer.rows, up.shape[1]), np.float32)
        for key, out_row in out_rows.items():
            if key in source_rows:
                block[out_row] = up[source_rows[key]]
        ups.append(block)
        downs.append(f32(module.parts["down"]))
        ranks.append(up.shape[1])
    keep_alpha = style == "kohya" and len(found) == 1
    if not keep_alpha:  # the scale goes into up: alpha = rank (kohya) or none (diffusers, PEFT)
        ups = [u * np.float32(m.scale) for u, (m, _) in zip(ups, found, strict=True)]
    up = np.concatenate(ups, axis=1)
    down = np.concatenate([d.reshape(d.shape[0], *d.shape[1:]) for d in downs], axis=0)
    kernel = downs[0].shape[2:]
    up = up.reshape(up.shape[0], up.shape[1], *([1] * len(kernel)))
    names = PART_NAMES[style]
    result = [
        _entry(f"{out_name}.{names['down']}", down, dtype),
        _entry(f"{out_name}.{names['up']}", up, dtype),
    ]
    if style == "kohya":
        alpha = found[0][0].alpha if keep_alpha else None
        value = alpha if alpha is not None else float(sum(ranks))
        result.append(_entry(f"{out_name}.alpha", np.array(value, np.float32), dtype))
    return result


def _renamed(out_name: str, module: Module, style: str, dtype: DType) -> list[PlanEntry]:
    """A layer whose cut is the same in both styles, its tensors under the new names."""
    if module.family != "lora":
        if style != "kohya":
            raise UsageError(
                f"{module.name} is {module.label}: diffusers and PEFT have no such layer"
            )
        return [
            PlanEntry(f"{out_name}.{name.rsplit('.', 1)[-1]}", t, t.dtype)  # type: ignore[arg-type]
            for name, t in zip(module.tensor_names, module.parts.values(), strict=True)
        ]
    raise UsageError(f"{module.name} is {module.label}: DoRA and Tucker layers are not converted")


def _entry(name: str, values: np.ndarray, dtype: DType) -> PlanEntry:
    typed = convert_values(np.ascontiguousarray(values), dtype)
    ref = TensorRef.from_array(name, typed, dtype)
    return PlanEntry(name, ref, dtype)
