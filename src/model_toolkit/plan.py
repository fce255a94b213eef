"""Plan: what an output file will contain, decided before any tensor is touched.

Every operation (convert, prune, extract, replace, build) is a function that returns a Plan, so
operations compose by transforming plans; the writers in `formats/` execute one (execute.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from .casting import cast
from .dtypes import DType
from .errors import UsageError
from .model import DEFAULT_CHUNK_BYTES, SizedByDType, TensorRef
from .storage import Chunk

# A transform gets a chunk of source values and the index of its first element, and returns the
# replacement values (same length; any dtype, they are converted to the entry's dtype after).
Transform = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class PlanEntry(SizedByDType):
    """One output tensor: its name, where its values come from, and the dtype it is written in.

    A `Tensor` (model.py) like the TensorRef it reads, so that whatever looks at values (the
    metric, diff, checks) takes a file's tensors and a plan's alike."""

    name: str
    reads: TensorRef  # the file (or memory) tensor whose values it writes
    dtype: DType
    transform: Transform | None = None
    # Never cast: a quantized weight's companion (its fp32 scale, its format's JSON bytes),
    # which in any other dtype is another scale.
    fixed: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return self.reads.shape

    def renamed(self, name: str) -> PlanEntry:
        return PlanEntry(name, self.reads, self.dtype, self.transform, self.fixed)

    def cast_to(self, dtype: DType) -> PlanEntry:
        """The same values in another dtype; a cast already planned is kept, then this one.
        A `fixed` entry stays as it is."""
        if dtype == self.dtype or self.fixed:
            return self
        if self.is_copy:
            return PlanEntry(self.name, self.reads, dtype)
        earlier = self

        def chained(chunk: np.ndarray, start: int) -> np.ndarray:
            return earlier._convert(chunk, start)

        return PlanEntry(self.name, self.reads, dtype, chained)

    @property
    def is_copy(self) -> bool:
        """Values pass through unchanged: no cast, no transform."""
        return self.transform is None and self.dtype == self.reads.dtype

    def chunks(self, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
        """Per chunk, its length and the work that reads it and turns it into output values
        (transform, cast), so that reading and casting run in worker threads while the caller
        writes."""
        # Size chunks by the wider of the two dtypes so that neither side exceeds max_bytes.
        widest = max(self.reads.dtype.itemsize, self.dtype.itemsize)
        start = 0
        for count, read in self.reads.chunks(max_bytes * self.reads.dtype.itemsize // widest):
            yield count, partial(self._read_and_convert, read, start)
            start += count

    def _read_and_convert(self, read: Callable[[], np.ndarray], start: int) -> np.ndarray:
        return self._convert(read(), start)

    def _convert(self, chunk: np.ndarray, start: int) -> np.ndarray:
        values = chunk if self.transform is None else self.transform(chunk, start)
        return convert_values(values, self.dtype)


def convert_values(values: np.ndarray, target: DType) -> np.ndarray:
    """Floats are cast as torch casts them; anything else is converted by numpy's rules."""
    if values.dtype == target.numpy:
        return values
    if values.ndim != 1:  # the casts work on runs of values
        return convert_values(values.reshape(-1), target).reshape(values.shape)
    if target.is_float and (values.dtype.kind == "f" or values.dtype.name in _ML_FLOATS):
        return cast(values, target)
    return values.astype(target.numpy)


_ML_FLOATS = {"bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"}


@dataclass
class Plan:
    """The output's tensors in order, and its metadata (plain data; strings for safetensors)."""

    entries: list[PlanEntry]
    metadata: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # the file the plan mostly comes from, for reports and default names
    warnings: list[str] = field(default_factory=list)  # what the user must know (partial model)
    # A torch file of the tensors alone, no metadata: what `torch.load` + `load_state_dict`
    # users expect (the webui's preview decoders); safetensors output is unaffected.
    state_dict_only: bool = False

    format = "plan"

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries)

    @property
    def tensors(self) -> dict[str, PlanEntry]:
        """The entries by name, as a ModelFile's tensors (see model.Source)."""
        return {entry.name: entry for entry in self.entries}


def refuse_quantized(plan: Plan, format_name: str) -> None:
    """A block-quantized tensor (Q8_0, Q4_K...) only exists in GGUF: other formats refuse it
    with what to do instead."""
    for entry in plan.entries:
        if entry.dtype.quantized:
            raise UsageError(
                f"{format_name} cannot store {entry.dtype.name} (tensor {entry.name!r}): "
                "write a .gguf, or choose --precision bf16, fp16 or fp32"
            )
