"""lora apply: LoRA, LoCon, LoHa, LoKr, full and DoRA layers merged into a model, streamed.

Each model tensor a LoRA changes is computed chunk by chunk: the rows of the chunk read from
the model, the same rows of each layer's delta computed from its small factors (`up[rows] @
down`), added in float32 in the order the LoRAs are given, then cast as torch casts to the
tensor's type (or `--precision`). A DoRA layer needs its whole weight (its norm is over the
merged weight), so its tensor is computed whole once: one tensor, never the model.

Which tensor a layer changes comes from lora/names.py (every name trainers give a layer). A
LoRA for another base is refused with both names; a layer of another shape, a file that is
no LoRA, a model with no part a LoRA applies to: one line each. Layers the model lacks
(a text encoder's, on a UNET-only file) are left out with a warning naming how many.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial

import numpy as np

from ..analysis import Analysis, analyze
from ..architectures.registry import load_registry
from ..dtypes import DType
from ..errors import UsageError
from ..hints import alike_bases
from ..lora.adapters import Module, f32, modules_of
from ..lora.names import Layer, Piece, index, layers, lora_side, role_of, trained_parts
from ..model import Source, Tensor, read_all
from ..plan import Plan, PlanEntry
from .common import copied, record, source_name, valued_tensors
from .merge import added, widened

BUNDLED = "bundle_emb."  # sd-scripts' textual inversions inside a LoRA: no weight to change


@dataclass(frozen=True)
class Change:
    """One LoRA layer's change to rows of one model tensor."""

    order: int  # the LoRA's place in the command: changes are added in this order
    strength: float
    module: Module
    layer: Layer
    piece: Piece
    bias: bool  # the change is to the layer's bias, not its weight

    @property
    def offset(self) -> int:
        """Where the piece's rows start among the layer's rows (a swapped half's part)."""
        return self.layer.starts[self.layer.pieces.index(self.piece)]


def lora_apply(
    model: Source, loras: list[tuple[Source, float]], precision: DType | None = None
) -> Plan:
    """`model` with each (LoRA, strength) merged in, in order."""
    if not loras:
        raise UsageError("give at least one LoRA")
    analysis = analyze(model, None)
    model_name = source_name(model)
    named = index(layers(trained_parts(analysis, model_name)))
    changes: dict[str, list[Change]] = {}
    warnings: list[str] = []
    applied = []
    for order, (lora, strength) in enumerate(loras):
        lora_name = source_name(lora)
        modules = _modules(lora, lora_name)
        try:
            found, missing = _changes(order, strength, modules, named, model_name)
            if len(missing) == len(modules):
                raise UsageError(
                    f"{lora_name} does not fit {model_name}: none of its {len(modules)} layers "
                    f"is in the model (first: {sorted(missing)[0]})"
                )
        except UsageError:
            _check_base(analyze(lora, None), analysis, lora_name, model_name)
            raise
        if missing:
            _check_base(analyze(lora, None), analysis, lora_name, model_name)
            warnings.append(
                f"{lora_name}: {len(missing)} of its {len(modules)} layers are not in "
                f"{model_name} and were left out (first: {sorted(missing)[0]})"
            )
        for name, more in found.items():
            changes.setdefault(name, []).extend(more)
        applied.append({"name": lora_name, "strength": strength, "layers": len(modules)})
    planned = []
    for name, value, dtype in valued_tensors(analysis, precision):
        found = changes.get(name)
        if not found:
            planned.append(copied(value, dtype))
            continue
        planned.append(PlanEntry(name, value, dtype, _transform(found, value)))  # type: ignore[arg-type]
    operation = {"op": "lora-apply", "loras": applied}
    plan = Plan(planned, record(dict(model.metadata), operation), model.origin)
    plan.warnings.extend(warnings)
    return plan


def _changes(
    order: int, strength: float, modules: dict[str, Module], named: dict[str, Layer], model: str
) -> tuple[dict[str, list[Change]], list[str]]:
    """Each model tensor's changes from one LoRA (shapes checked), and the layers the model
    does not have."""
    found: dict[str, list[Change]] = {}
    missing = []
    for module in modules.values():
        layer = named.get(lora_side(module.name))
        if layer is None:
            missing.append(module.name)
            continue
        if module.changes_weight:
            module.check_fits(layer.shape)
        for piece in layer.pieces:
            if module.changes_weight:
                weight = Change(order, strength, module, layer, piece, False)
                found.setdefault(piece.weight, []).append(weight)
            bias_change = module.bias_rows(0, layer.rows)
            if bias_change is not None:
                if piece.bias is None:
                    raise UsageError(f"{module.name} changes a bias {model} lacks")
                if len(bias_change) != layer.rows:
                    raise UsageError(
                        f"LoRA layer {module.name} does not fit the model: its bias change "
                        f"has {len(bias_change)} values, the layer {layer.rows}"
                    )
                bias = Change(order, strength, module, layer, piece, True)
                found.setdefault(piece.bias, []).append(bias)
    return found, missing


def _check_base(lora: Analysis, model: Analysis, lora_name: str, model_name: str) -> None:
    """Where a LoRA does not fit: refused as another base's if it is identified as one (an
    SD-XL LoRA on an SD-v1 model). Only then: a few layers can look like another base's."""
    bases = alike_bases(lora)
    if not bases or model.architecture is None:
        return
    registry = load_registry()
    classes = {cls for cls in model.components if role_of(cls) is not None}  # not the VAE
    for base, _ in bases:
        arch = registry.architectures.get(base)
        if arch is not None and classes & set(arch.all_classes):
            return
    said = " or ".join(dict.fromkeys(base for base, _ in bases))
    raise UsageError(f"{lora_name} is a LoRA for {said}; {model_name} is {model.architecture}")


def _modules(lora: Source, lora_name: str) -> dict[str, Module]:
    modules, others = modules_of(dict(lora.tensors), lora_name)
    others = [name for name in others if not name.startswith(BUNDLED)]
    if not modules:
        raise UsageError(f"{lora_name} is not a LoRA: no LoRA, LoHa or LoKr layers in it")
    if others:
        raise UsageError(
            f"{lora_name}: {len(others)} tensors are no LoRA layer part (first: "
            f"{sorted(others)[0]}); lora apply merges LoRA, LoHa, LoKr, full and DoRA layers"
        )
    return modules


def _transform(found: list[Change], value: Tensor):  # type: ignore[no-untyped-def]
    found = sorted(found, key=lambda c: c.order)
    whole = any(("magnitude" in c.module.parts or c.module.whole_only) for c in found)
    if whole and not any(c.bias for c in found):
        return partial(_from_whole, _Whole(found, value))
    row = int(np.prod(value.shape[1:])) if len(value.shape) > 1 else 1
    return partial(_added, found, row)


def _added(found: list[Change], row: int, chunk: np.ndarray, start: int) -> np.ndarray:
    """A chunk of the tensor with each change to its rows added, in order, in float32."""
    values: np.ndarray | None = None
    count = len(chunk)
    first, last = start // row, -(-(start + count) // row)
    for change in found:
        piece = change.piece
        low, high = max(first, piece.start), min(last, piece.stop)
        if low >= high:
            continue
        begin = change.offset + low - piece.start
        delta = _delta(change, begin, begin + high - low).reshape(-1)
        at = low * row - start
        skip = max(0, -at)
        end = min(high * row - start, count)
        part = delta[skip : skip + end - max(at, 0)]
        if values is None and at <= 0 and end == count:
            values = added(chunk, part, change.strength)  # W + delta * s in one pass
            continue
        if values is None:
            values = widened(chunk)
        if change.strength != 1:
            part = part * np.float32(change.strength)
        values[max(at, 0) : end] += part
    return widened(chunk) if values is None else values


def _delta(change: Change, start: int, stop: int) -> np.ndarray:
    if change.bias:
        rows = change.module.bias_rows(start, stop)
        assert rows is not None
        return rows
    return change.module.rows(start, stop, change.layer.shape)


class _Whole:
    """A tensor with a DoRA change, computed whole once and handed out by chunks."""

    def __init__(self, found: list[Change], value: Tensor) -> None:
        self.found, self.value = found, value
        self.result: np.ndarray | None = None
        self.left = 0  # elements not yet handed out: at 0 the tensor leaves memory
        self.lock = threading.Lock()

    def take(self, start: int, count: int) -> np.ndarray:
        with self.lock:
            result = self.result
            if result is None:
                result = self.result = self._compute()
                self.left = len(result)
                for change in self.found:
                    change.module.release()  # a module changes one tensor: its cache goes
            self.left -= count
            if self.left <= 0:
                self.result = None
        return result[start : start + count]

    def _compute(self) -> np.ndarray:
        shape = self.value.shape
        weight = read_all(self.value).astype(np.float32).reshape(shape[0], -1)
        for change in self.found:
            piece = change.piece
            rows = slice(piece.start, piece.stop)
            begin = change.offset
            delta = _delta(change, begin, begin + piece.stop - piece.start)
            strength = np.float32(change.strength)
            if "magnitude" not in change.module.parts:
                weight[rows] += delta.reshape(weight[rows].shape) * strength
                continue
            if len(change.layer.pieces) != 1:
                raise UsageError(f"{change.module.name}: DoRA on a split layer is not merged")
            decomposed = dora(weight[rows], delta, f32(change.module.parts["magnitude"]), shape)
            if change.strength == 1:
                weight[rows] = decomposed
            else:
                weight[rows] += strength * (decomposed - weight[rows])
        return weight.reshape(-1)


def _from_whole(whole: _Whole, chunk: np.ndarray, start: int) -> np.ndarray:
    return whole.take(start, len(chunk))


def dora(
    weight: np.ndarray, delta: np.ndarray, magnitude: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """DoRA's merged weight, as PEFT defines it: `m * (W + dW) / ||W + dW||`, the norm per
    output row, or per input channel where the magnitude has one value per input (LyCORIS's
    and OneTrainer's `dora_scale` of shape [1, in])."""
    merged = weight + delta.reshape(weight.shape)
    m = magnitude.reshape(-1)
    rows = merged.shape[0]
    if m.size == rows:
        norm = np.sqrt(np.sum(merged * merged, axis=1, keepdims=True))
        return merged * (m.reshape(rows, 1) / norm)
    inputs = shape[1] if len(shape) > 1 else 0
    if m.size != inputs:
        raise UsageError(f"a DoRA magnitude of {m.size} values does not fit a layer {list(shape)}")
    per_input = merged.reshape(rows, inputs, -1)
    norm = np.sqrt(np.sum(per_input * per_input, axis=(0, 2), keepdims=True))
    return (per_input * (m.reshape(1, inputs, 1) / norm)).reshape(merged.shape)
