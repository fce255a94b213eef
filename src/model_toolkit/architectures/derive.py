"""Key lists made by a rule from another list: a family's LoRAs from its transformer's keys.

A LoRA (or LoHa, LoKr) trains a small set of tensors for some of a model's linear and conv
layers, and each trainer names them its own way (registry `lora_formats`: kohya/musubi-tuner
`lora_unet_<path with underscores>.lora_down.weight`, diffusers/PEFT
`transformer.<path>.lora_A.weight`, ai-toolkit `diffusion_model.<path>...`, LyCORIS
`hada_w1_a`..., `lokr_w1`...). So a family's adapter lists are not typed by hand: they follow
from its transformer's list, the same tensors for every weight of two or more dimensions, free
sizes (the rank, a Kronecker factor) as -1. Found as `subset` lists: any trained part.

A text encoder's LoRA trains only its attention and MLP layers (sd-scripts' targets), named
from the encoder model inside the file's wrapper (`lora_te_layers_0_self_attn_q_proj` for the
file's `model.layers.0.self_attn.q_proj`): a format says so with `select` (a regular
expression a layer's path must match) and `strip` (a leading part its name drops).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .keylists import KeyList


def lora_keys(base: KeyList, form: Mapping[str, Any]) -> KeyList:
    """The keys an adapter of `base` has in the format `form`: `module` names a layer
    (`{path}` its dotted path, `{flat}` the same with underscores); `tensors` lists, per
    layer, (suffix, shape) where a shape is made of `out`, `in` (the layer's sizes), `free`
    (-1), `kernel` (its kernel sizes, if any) and `ones` (as many 1s); `select` and `strip`,
    if given, choose the layers and shorten their paths."""
    select = re.compile(form["select"]) if "select" in form else None
    strip = form.get("strip", "")
    keys: KeyList = []
    for name, shape in base:
        if not name.endswith(".weight") or len(shape) < 2:
            continue
        path = name[: -len(".weight")]
        if select is not None and not select.match(path):
            continue
        path = path.removeprefix(strip)
        module = form["module"].format(path=path, flat=path.replace(".", "_"))
        for suffix, pattern in form["tensors"]:
            keys.append((f"{module}.{suffix}", _shape(pattern, shape)))
    return keys


def _shape(pattern: Sequence[str], weight: tuple[int, ...]) -> tuple[int, ...]:
    out, inner, kernel = weight[0], weight[1], weight[2:]
    sizes: list[int] = []
    for token in pattern:
        if token == "out":
            sizes.append(out)
        elif token == "in":
            sizes.append(inner)
        elif token == "free":
            sizes.append(-1)
        elif token == "kernel":
            sizes.extend(kernel)
        elif token == "ones":
            sizes.extend(1 for _ in kernel)
        else:
            raise ValueError(f"unknown size {token!r} in a lora_formats shape")
    return tuple(sizes)
