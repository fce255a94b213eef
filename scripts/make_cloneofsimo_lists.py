"""Write the key lists of cloneofsimo's LoRA files (lora_diffusion, 2022-23), by its own rule.

Its `save_safeloras_with_embeds` names tensors by position, not by layer: `unet:{i}:up`,
`unet:{i}:down`, `text_encoder:{i}:...`, where `i` counts the LoRA'd layers in the order
`_find_modules_v2` visits them (every module of a target class in `model.modules()` order, then
the Linear, and with the "extended" preset Conv2d, layers inside it). So the lists cannot be
derived from our alphabetical key lists; this script builds SD-v1/SD-v2 UNets and CLIP text
encoders on the meta device (no weights) and walks them as cloneofsimo did. Run once, by hand,
with diffusers and transformers importable (not dependencies of the package):

    PYTHONPATH=<diffusers+transformers> python scripts/make_cloneofsimo_lists.py

The shapes: `up` [out, rank], `down` [rank, in] (conv: up [out, rank, 1, 1], down
[rank, in, k, k]); the rank is free (-1).
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

DATA = Path(__file__).resolve().parents[1] / "src/model_toolkit/architectures/data"
UNET_DEFAULT = {"CrossAttention", "Attention", "GEGLU"}
UNET_EXTENDED = UNET_DEFAULT | {"ResnetBlock2D"}
CLIP_TARGETS = {"CLIPAttention"}

UNETS = {
    "v1": dict(cross_attention_dim=768, attention_head_dim=8),
    "v2": dict(
        cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True
    ),
}
CLIPS = {
    "v1": dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
    ),
    "v2": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16
    ),
}


def lora_layers(model: torch.nn.Module, targets: set[str], convs: bool) -> list[torch.nn.Module]:
    """The layers cloneofsimo trains, in the order its saver numbers them."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d) if convs else (torch.nn.Linear,)
    found = []
    for ancestor in model.modules():
        if type(ancestor).__name__ not in targets:
            continue
        found += [m for _, m in ancestor.named_modules() if isinstance(m, kinds)]
    return found


def lines(group: str, layers: list[torch.nn.Module]) -> list[str]:
    out = []
    for index, layer in enumerate(layers):
        if isinstance(layer, torch.nn.Conv2d):
            up = [layer.out_channels, -1, 1, 1]
            down = [-1, layer.in_channels, *layer.kernel_size]
        else:
            up, down = [layer.out_features, -1], [-1, layer.in_features]
        out.append(f"{group}:{index}:up [{','.join(map(str, up))}]")
        out.append(f"{group}:{index}:down [{','.join(map(str, down))}]")
    return out


def write(name: str, source: str, body: list[str]) -> None:
    text = f"# source: {source}\n" + "\n".join(body) + "\n"
    (DATA / f"{name}.txt").write_text(text, encoding="utf-8")
    print(name, len(body))


def main() -> None:
    versions = f"diffusers {diffusers.__version__}, transformers {transformers.__version__}"
    for version, config in UNETS.items():
        with torch.device("meta"):
            unet = UNet2DConditionModel(**config)
        for preset, targets, convs in (
            ("", UNET_DEFAULT, False),
            ("-Extended", UNET_EXTENDED, True),
        ):
            source = (
                f"cloneofsimo/lora save_safeloras_with_embeds numbering, walked over {versions} "
                f"UNet2DConditionModel(SD-{version} config) on meta; targets {sorted(targets)}"
            )
            write(
                f"LoRA-{version}-UNET-Cloneofsimo{preset}",
                source,
                lines("unet", lora_layers(unet, targets, convs)),
            )
    for version, config in CLIPS.items():
        with torch.device("meta"):
            clip = CLIPTextModel(CLIPTextConfig(**config))
        source = (
            f"cloneofsimo/lora save_safeloras_with_embeds numbering, walked over {versions} "
            f"CLIPTextModel(SD-{version} text encoder config) on meta; targets ['CLIPAttention']"
        )
        width = config["hidden_size"]
        write(
            f"LoRA-{version}-CLIP-Cloneofsimo",
            source,
            lines("text_encoder", lora_layers(clip, CLIP_TARGETS, False)),
        )
        write(
            f"Embedding-{version}-Cloneofsimo",
            "cloneofsimo/lora pivotal tuning: a learned token's embedding, saved under the token "
            f"itself (`<s1>`, metadata value `<embed>`); `<token>` stands for any name in angle "
            f"brackets (registry name_patterns); width {width}, the SD-{version} text encoder's",
            [f"<token> [{width}]"],
        )


if __name__ == "__main__":
    main()
