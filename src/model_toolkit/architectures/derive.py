"""Key lists made by a rule from another list: a family's LoRAs from its transformer's keys.

A LoRA trains a low-rank pair for some of a model's linear (and conv) layers, and each trainer
names the pair its own way (registry `lora_formats`: kohya/musubi-tuner `lora_unet_<path with
underscores>.lora_down.weight`, diffusers/PEFT `transformer.<path>.lora_A.weight`, ai-toolkit
`diffusion_model.<path>...`). So a family's LoRA lists are not typed by hand: they follow from
its transformer's list, one pair (and an alpha, where the format has one) per weight of two or
more dimensions, the rank a free dimension (-1). Found as `subset` lists: any trained part.
"""

from __future__ import annotations

from collections.abc import Mapping

from .keylists import KeyList


def lora_keys(base: KeyList, form: Mapping[str, str]) -> KeyList:
    """The keys a LoRA of `base` has in the format `form` (module, down, up[, alpha,
    magnitude]): `{path}` is the layer's dotted path, `{flat}` the same with underscores."""
    keys: KeyList = []
    for name, shape in base:
        if not name.endswith(".weight") or len(shape) < 2:
            continue
        path = name[: -len(".weight")]
        module = form["module"].format(path=path, flat=path.replace(".", "_"))
        out, inner, kernel = shape[0], shape[1], shape[2:]
        keys.append((f"{module}.{form['down']}", (-1, inner, *kernel)))
        keys.append((f"{module}.{form['up']}", (out, -1, *(1 for _ in kernel))))
        if "alpha" in form:
            keys.append((f"{module}.{form['alpha']}", ()))
        if "magnitude" in form:
            keys.append((f"{module}.{form['magnitude']}", (out,)))
    return keys
