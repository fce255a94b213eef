"""Checking that a written file holds exactly what its plan said, before an input is let go.

The checksums are taken from the very bytes handed to the writer, as they stream past, so
checking costs one more read of the output, not a second pass over the inputs and the casts.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelToolkitError
from .formats import open_model
from .formats.safetensors import metadata_as_strings
from .model import values
from .plan import PlanEntry


@dataclass(frozen=True)
class TensorRecord:
    dtype: str
    shape: tuple[int, ...]
    crc32: int

    def as_list(self) -> list[Any]:
        return [self.dtype, list(self.shape), self.crc32]

    @classmethod
    def from_list(cls, raw: list[Any]) -> TensorRecord:
        return cls(str(raw[0]), tuple(int(d) for d in raw[1]), int(raw[2]))


class TensorChecksums:
    """A tap (execute.py) that records the CRC-32 of each tensor's output bytes as they are
    written: `records`, by tensor name, once the write is done."""

    def __init__(self) -> None:
        self.records: dict[str, TensorRecord] = {}
        self._crc = 0

    def on_chunk(self, entry: PlanEntry, chunk: np.ndarray) -> None:
        self._crc = zlib.crc32(chunk.view(np.uint8), self._crc)

    def on_done(self, entry: PlanEntry) -> None:
        self.records[entry.name] = TensorRecord(entry.dtype.name, tuple(entry.shape), self._crc)
        self._crc = 0


def verify_output(path: Path, records: dict[str, TensorRecord], metadata: dict[str, Any]) -> None:
    """Reopen a written file and compare its header and every tensor's CRC-32 with the records.

    Raises ModelToolkitError saying what differs; returns quietly when all matches.
    """
    with open_model(path) as model:
        if list(model.tensors) != list(records):
            raise ModelToolkitError(f"{path.name}: the written tensors differ from the plan")
        if model.format == "safetensors" and model.metadata != metadata_as_strings(metadata):
            raise ModelToolkitError(f"{path.name}: the written metadata differs from the plan")
        for name, ref in model.tensors.items():
            want = records[name]
            if (ref.dtype.name, tuple(ref.shape)) != (want.dtype, want.shape):
                raise ModelToolkitError(f"{path.name}: tensor {name} has the wrong dtype or shape")
            crc = 0
            for chunk in values(ref):
                crc = zlib.crc32(np.ascontiguousarray(chunk).view(np.uint8), crc)
            if crc != want.crc32:
                raise ModelToolkitError(f"{path.name}: tensor {name} does not read back the same")
