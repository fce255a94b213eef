"""Quantized layers inside safetensors files: what each weight's companions are, and the shapes
the registry's lists know them by. Names and shapes only (header first).

ComfyUI's `fp8_scaled` files keep each Linear weight in fp8 with a `<layer>.scale_weight`
(and maybe `.scale_input`) beside it and a `scaled_fp8` marker; its "mixed" files say each
layer's format in a `<layer>.comfy_quant` tensor or in `__metadata__["_quantization_metadata"]`,
with `weight_scale`, `weight_scale_2`, `input_scale`; nvfp4 packs two values a byte, so its
stored weight is half as wide as the layer. bitsandbytes NF4 files (Forge's `flux1-dev-bnb-nf4`)
flatten each weight to bytes with `.weight.absmax`, `.weight.quant_map`, `.weight.quant_state.*`;
Nunchaku (SVDQuant) stores `.qweight` with `.wscales` and low-rank branches. A toolkit that
matched these names as they are would call the scales junk (and pruning would drop them: a
silent white image) and the weights of other shapes a model it does not know.

So before matching, each companion is set aside with the weight it belongs to, and each weight
is given the shape its layer has (nvfp4: twice the last dimension; NF4 and Nunchaku: not known
from the header, taken from the list that names it). The suffixes are data (registry
`quantization`); the companions go wherever their weight goes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .architectures.registry import Registry

Shape = tuple[int, ...]


@dataclass
class QuantView:
    """A file's names as the registry matches them, and what was set aside to get there."""

    shapes: dict[str, Shape | None]  # name to match -> shape (None: any, taken from the lists)
    matching_name: dict[str, str] = field(default_factory=dict)  # file name -> name matched
    companions: dict[str, str] = field(default_factory=dict)  # companion -> its weight's name
    markers: list[str] = field(default_factory=list)  # `scaled_fp8` and the like
    layers: dict[str, str] = field(default_factory=dict)  # weight -> its format, as said

    @property
    def quantized(self) -> bool:
        return bool(self.companions or self.markers or self.layers)

    def restore(self, detection: Any, shapes: Mapping[str, Shape]) -> None:
        """Give the detection every tensor of the file under its own name: a weight matched
        under another spelling gets its key back, companions and markers their own."""
        for name, matched in self.matching_name.items():
            detection.keys[name] = detection.keys.pop(matched)
        for name in [*self.companions, *self.markers]:
            detection.keys[name] = (name, tuple(shapes[name]))

    def companion_keys(self, detection: Any, keys: set[Any]) -> set[Any]:
        """The keys of the companions whose weights have keys in `keys`, and of the markers
        beside any such weight (`model.diffusion_model.scaled_fp8` with the UNET's)."""
        found = {detection.keys[c] for c, w in self.companions.items() if detection.keys[w] in keys}
        for marker in self.markers:
            prefix = marker.rpartition(".")[0]
            if any(
                detection.keys[w] in keys and (not prefix or w.startswith(prefix + "."))
                for w in self.layers
            ):
                found.add(detection.keys[marker])
        return found

    def scale_of(self, weight: str, tensors: Mapping[str, Any]) -> float | None:
        """The one scale of an fp8 weight (`.scale_weight` or `.weight_scale`, a scalar), read;
        None for any other layer (blockwise scales, nvfp4, NF4: not decoded here)."""
        scale = next(
            (
                tensors[c]
                for c, w in self.companions.items()
                if w == weight and c.endswith((".scale_weight", ".weight_scale"))
            ),
            None,
        )
        if scale is None or scale.numel != 1 or not self.layers[weight].startswith("fp8"):
            return None
        from .model import read_all

        return float(read_all(scale).reshape(-1)[0])

    def value_of(self, weight: str, tensors: Mapping[str, Any]) -> Any:
        """An fp8 weight with one scale as float32 values times the scale (a Tensor); any other
        quantized weight as it is stored."""
        factor = self.scale_of(weight, tensors)
        if factor is None:
            return tensors[weight]
        from functools import partial

        from .dtypes import DTYPES
        from .plan import PlanEntry

        return PlanEntry(weight, tensors[weight], DTYPES["F32"], partial(times, factor))

    def keeps_dtype(self, name: str) -> bool:
        """Companions and markers are never cast (an fp32 scale in bf16 is another scale)."""
        return name in self.companions or name in self.markers

    def formats(self) -> dict[str, int]:
        """Layers per format, most first (`fp8 e4m3fn, scaled: 358`)."""
        counts: dict[str, int] = {}
        for form in self.layers.values():
            counts[form] = counts.get(form, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))


def times(factor: float, chunk: Any, start: int) -> Any:
    """A plan transform: the values in float32, times a weight's scale (ComfyUI's
    `w.float() * scale`)."""
    import numpy as np

    return chunk.astype(np.float32) * np.float32(factor)


def quant_view(
    shapes: Mapping[str, Shape],
    dtypes: Mapping[str, str],
    metadata: Mapping[str, Any],
    registry: Registry,
) -> QuantView:
    """Set companions aside, give weights their layers' shapes, and say each layer's format."""
    rules = registry.quantization
    view = QuantView(dict(shapes))
    if not rules:
        return view
    suffixes = [(suffix, weight) for suffix, weight in rules["companions"]]
    markers = set(rules.get("markers", ()))
    endings = tuple(suffix for suffix, _ in suffixes)
    for name in shapes:
        if name.rpartition(".")[2] in markers:
            view.markers.append(name)
            del view.shapes[name]
            continue
        if not name.endswith(endings):  # one C-level test for nearly every name
            continue
        for suffix, weight in suffixes:
            if name.endswith(suffix) and name[: -len(suffix)] + weight in shapes:
                view.companions[name] = name[: -len(suffix)] + weight
                del view.shapes[name]
                break
    for stored, listed in rules.get("weights", ()):  # Nunchaku's `.qweight`: the layer's
        for name in [n for n in view.shapes if n.endswith(stored)]:
            matched = name[: -len(stored)] + listed
            view.matching_name[name] = matched
            view.shapes[matched] = None
            del view.shapes[name]
    said = _said_formats(metadata)
    by_weight: dict[str, set[str]] = {}
    for companion, weight in view.companions.items():
        by_weight.setdefault(weight, set()).add(companion[len(weight.rpartition(".")[0]) :])
    for weight in view.matching_name:
        by_weight.setdefault(weight, set())
    for weight, parts in by_weight.items():
        form = said.get(weight) or _format(dtypes.get(weight, ""), parts, bool(view.markers))
        form = "nunchaku int4" if weight in view.matching_name else form
        view.layers[weight] = form
        if form == "nvfp4" and weight in view.shapes and shapes[weight]:
            *outer, last = shapes[weight]
            view.shapes[weight] = (*outer, last * 2)  # two e2m1 values a byte
        elif form.startswith("bitsandbytes") and weight in view.shapes:
            view.shapes[weight] = None  # flattened bytes: the shape is in its quant_state
    return view


def _said_formats(metadata: Mapping[str, Any]) -> dict[str, str]:
    """weight -> format, from `__metadata__["_quantization_metadata"]` (ComfyUI's mixed files)."""
    raw = metadata.get("_quantization_metadata")
    if not isinstance(raw, str):
        return {}
    try:
        layers = json.loads(raw).get("layers", {})
    except (ValueError, AttributeError):
        return {}
    if not isinstance(layers, dict):
        return {}
    return {
        f"{layer}.weight": str(conf.get("format"))
        for layer, conf in layers.items()
        if isinstance(conf, dict) and conf.get("format")
    }


def _format(dtype: str, parts: set[str], marked: bool) -> str:
    """A layer's format from its weight's dtype and its companions' suffixes."""
    if any(p.startswith(".weight.quant_state.bitsandbytes__nf4") for p in parts):
        return "bitsandbytes nf4"
    if any(p.startswith(".weight.quant_state.bitsandbytes__fp4") for p in parts):
        return "bitsandbytes fp4"
    if any(p.startswith(".weight.") for p in parts):
        return "bitsandbytes"
    if ".weight_scale_2" in parts:
        return "nvfp4"
    if dtype in ("F8_E4M3", "F8_E5M2"):
        return f"fp8 {'e4m3fn' if dtype == 'F8_E4M3' else 'e5m2'}, scaled"
    if dtype == "I8":
        return "int8, scaled"
    return f"{dtype.lower() or 'unknown'}, scaled"


def fill_open_shapes(shapes: dict[str, Shape | None], registry: Registry) -> dict[str, Shape]:
    """Shapes the header does not tell (NF4, Nunchaku) as the list naming most of them has
    them (FLUX.2 has Flux.1's names in other widths: the list that fits the file, not the
    first one), then the next; () where none does (then nothing matches it)."""
    open_names = {name for name, shape in shapes.items() if shape is None}
    if not open_names:
        return shapes  # type: ignore[return-value]
    from .architectures.registry import NameIndex

    index = NameIndex(list(shapes))
    lists = []
    for component in registry.components.values():
        if component.derived_form is None and component.may_match(index):
            listed = {}
            for key, shape in component.keys:
                listed[key] = shape
                listed[component.prefix + key] = shape
            fits = sum(1 for n, s in shapes.items() if s is not None and listed.get(n) == s)
            lists.append((len(open_names & listed.keys()), fits, listed))
    filled = dict(shapes)
    for _, _, listed in sorted(lists, key=lambda item: (-item[0], -item[1])):
        for name in open_names:
            if filled.get(name) is None and name in listed:
                filled[name] = listed[name]
    return {name: (() if shape is None else shape) for name, shape in filled.items()}
