"""Operations: each takes an opened model (or a Plan) and returns a Plan. Nothing is read here,
but by lora extract and resize, whose SVDs decide the output's shapes before its header."""

from .build import build
from .convert import convert
from .edit_metadata import edit_metadata
from .extract import extract
from .lora_apply import lora_apply
from .lora_convert import lora_convert
from .lora_extract import lora_extract, lora_resize
from .merge import merge
from .prune import prune
from .replace import replace

__all__ = [
    "build",
    "convert",
    "edit_metadata",
    "extract",
    "lora_apply",
    "lora_convert",
    "lora_extract",
    "lora_resize",
    "merge",
    "prune",
    "replace",
]
