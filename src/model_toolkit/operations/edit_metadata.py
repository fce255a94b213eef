"""Editing a file's metadata: every tensor copied as it is, the header rewritten."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..metadata import edited
from ..model import Source
from ..plan import Plan
from .convert import convert


def edit_metadata(source: Source, sets: dict[str, str], remove: list[str]) -> Plan:
    """`source` with the metadata keys in `sets` set and those in `remove` removed (removing
    an absent key is an error). Only safetensors carries metadata of this kind: a checkpoint's
    non-tensor entries are its own."""
    if source.format not in ("safetensors", "plan"):
        name = Path(source.origin).name
        raise UsageError(
            f"{name} is a {source.format} file: metadata can be edited in .safetensors only"
        )
    plan = convert(source, None)
    plan.metadata = edited(dict(source.metadata), sets, remove)
    return plan
