"""safetensors `__metadata__`: shown readably, edited, and ModelSpec fields written on request.

ModelSpec's `modelspec.hash_sha256` is the SHA-256 of the tensor data after the header (what
hubs call AutoV3). The header is written before the data, so the field is written as a
placeholder of the same length and patched in place once the data has streamed past: one pass.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import Analysis
from .architectures.registry import load_registry
from .errors import ModelToolkitError, UsageError
from .plan import Plan, PlanEntry

HASH_KEY = "modelspec.hash_sha256"
HASH_PLACEHOLDER = "0x" + "0" * 64
TAG_SUMMARY_COUNT = 10


def parse_value(text: str) -> Any:
    """A metadata value as data: JSON where it is JSON (kohya stores dicts as strings)."""
    if not isinstance(text, str):
        return text
    stripped = text.strip()
    if stripped[:1] in "{[":
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    return text


def tag_summary(value: Any) -> list[str]:
    """kohya's ss_tag_frequency ({dataset: {tag: count}}) as its most frequent tags."""
    lines = []
    if not isinstance(value, dict):
        return lines
    for dataset, tags in value.items():
        if not isinstance(tags, dict):
            continue
        top = sorted(tags.items(), key=lambda item: -int(item[1]) if str(item[1]).isdigit() else 0)
        shown = ", ".join(f"{tag} ({count})" for tag, count in top[:TAG_SUMMARY_COUNT])
        lines.append(f"{dataset}: {len(tags)} tags; most frequent: {shown}")
    return lines


def describe(metadata: dict[str, Any]) -> str:
    """ModelSpec fields, then kohya training fields, then the rest; JSON values indented."""
    if not metadata:
        return "no metadata\n"
    groups: dict[str, list[str]] = {"ModelSpec": [], "Training (kohya)": [], "Other": []}
    for key in sorted(metadata):
        value = parse_value(metadata[key])
        group = (
            "ModelSpec"
            if key.startswith("modelspec.")
            else "Training (kohya)"
            if key.startswith("ss_") or key.startswith("sshs_")
            else "Other"
        )
        if key == "ss_tag_frequency":
            text = "\n    ".join(tag_summary(value)) or str(metadata[key])
            groups[group].append(f"  {key}:\n    {text}")
        elif isinstance(value, dict | list):
            pretty = json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n    ")
            groups[group].append(f"  {key}:\n    {pretty}")
        else:
            groups[group].append(f"  {key}: {value}")
    return "".join(
        f"{title}\n" + "\n".join(lines) + "\n" for title, lines in groups.items() if lines
    )


def edited(metadata: dict[str, Any], sets: dict[str, str], removes: list[str]) -> dict[str, Any]:
    """The metadata with keys set and removed; removing a key that is absent is an error."""
    result = dict(metadata)
    for key in removes:
        if key not in result:
            raise UsageError(f"no metadata key {key!r} to remove")
        del result[key]
    result.update(sets)
    return result


def modelspec_fields(
    analysis: Analysis, title: str, metadata: dict[str, Any] | None = None
) -> dict[str, str]:
    """The ModelSpec fields the identification and the file's own metadata support (the hash
    is a placeholder until the data is written; see patch_data_hash)."""
    from .hints import prediction_type

    fields = {"modelspec.sai_model_spec": "1.0.0", "modelspec.title": title}
    prediction = prediction_type(analysis.tensors, metadata or {})
    if prediction:
        fields["modelspec.prediction_type"] = prediction
    arch = analysis.architecture
    spec = load_registry().architectures[arch].modelspec if arch else None
    if spec:
        fields["modelspec.architecture"] = spec["architecture"]
        fields["modelspec.implementation"] = spec["implementation"]
    fields["modelspec.date"] = datetime.date.today().isoformat()
    fields[HASH_KEY] = HASH_PLACEHOLDER
    return fields


class DataHash:
    """A tap (execute.py) that hashes the output's data (everything after the header) as it
    is written, for ModelSpec's hash_sha256 in the same pass."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def on_chunk(self, entry: PlanEntry, chunk: np.ndarray) -> None:
        self.digest.update(chunk.view(np.uint8))

    def on_done(self, entry: PlanEntry) -> None:
        pass


def with_modelspec(plan: Plan, title: str) -> tuple[Plan, dict[str, Any]]:
    """The plan with ModelSpec fields, and the `write_plan` arguments that fill in its
    `modelspec.hash_sha256` as the data is written (a tap that hashes the data, a finalize
    that patches the header's placeholder): `write_plan(plan, out, **arguments)`."""
    from dataclasses import replace

    from .analysis import analyze

    fields = modelspec_fields(analyze(plan), title, plan.metadata)
    data_hash = DataHash()
    arguments = {"taps": [data_hash], "finalize": partial(patch_data_hash, data_hash=data_hash)}
    return replace(plan, metadata={**plan.metadata, **fields}), arguments


def patch_data_hash(temp: Path, data_hash: DataHash) -> None:
    """Replace the placeholder in a written .safetensors header with the data's SHA-256."""
    with open(temp, "r+b") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = handle.read(length)
        placeholder = json.dumps(HASH_PLACEHOLDER).encode()
        position = header.find(placeholder)
        if position < 0:
            raise ModelToolkitError(f"{temp.name}: the ModelSpec hash placeholder is missing")
        handle.seek(8 + position)
        handle.write(json.dumps("0x" + data_hash.digest.hexdigest()).encode())
        handle.flush()
        os.fsync(handle.fileno())
