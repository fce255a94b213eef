"""lora extract and lora resize: a LoRA from the difference of two models, and a LoRA at
another rank; one layer in memory at a time.

extract: per layer a LoRA trainer targets (linear layers and 1x1 convolutions at `rank`,
larger kernels at `conv_rank` if given, embeddings and norms never), the change `tuned - base`
in float32 and its SVD; the rank-r factors (`up = U * S`, `down = Vh`, as sd-scripts keeps
them) in sd-scripts' names with alpha = rank (scale 1), which AUTOMATIC1111, Forge and ComfyUI
load. Unlike sd-scripts' extractor we do not clip the factors at their 99th percentile: the
result is the closest rank-r change, its error the SVD's own.

resize: each LoRA/LoCon layer's `up @ down` factored again at the new rank (QR of each
factor, then the SVD of the small core), alpha set so that alpha / rank is the layer's old
scale, as sd-scripts' resize_lora does.

Both compute their factors here, before the write: a dynamic rank makes the output's shapes
known only after each SVD, and a safetensors header comes first. The layers are worked on in
parallel threads (LAPACK releases the GIL); what is kept is the LoRA, not the models.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..analysis import analyze
from ..dtypes import DTYPES, DType
from ..errors import UsageError
from ..lora.adapters import Module, f32, modules_of
from ..lora.names import Layer, trained, trained_parts, written_layers
from ..lora.svd import Factors, check_dynamic, factorize, refactorize
from ..model import Source, Tensor, TensorRef, read_all
from ..plan import Plan, PlanEntry, convert_values
from .common import record, source_name
from .merge import _check_same_architecture, difference


@dataclass
class Timing:
    """Where an extraction's time went, summed over its worker threads."""

    reading: float = 0.0
    svd: float = 0.0
    layers: int = 0
    skipped: int = 0
    kept: list[float] = field(default_factory=list)  # per layer: the share of its change kept
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, reading: float, svd: float | None, kept: float | None) -> None:
        """One layer's times (svd None: left out unchanged), from any worker thread."""
        with self.lock:
            self.reading += reading
            if svd is None:
                self.skipped += 1
                return
            self.svd += svd
            self.layers += 1
            if kept is not None:
                self.kept.append(kept)

    def text(self) -> str:
        least = f", least kept {min(self.kept):.1%} of a layer's change" if self.kept else ""
        return (
            f"{self.layers} layers ({self.skipped} unchanged left out): SVD {self.svd:.1f} s, "
            f"reading {self.reading:.1f} s (summed over threads){least}"
        )


def lora_extract(
    tuned: Source,
    base: Source,
    rank: int,
    conv_rank: int | None = None,
    dynamic: tuple[str, float] | None = None,
    precision: DType | None = None,
    min_diff: float = 0.0,
    exact: bool = False,
) -> tuple[Plan, Timing]:
    """A LoRA (sd-scripts' format) of `tuned - base`, and where the time went; `exact`: the
    full SVD of every layer, not the randomized one (lora/svd.py)."""
    if rank < 1 or (conv_rank is not None and conv_rank < 1):
        raise UsageError("--rank and --conv-rank are 1 or more")
    check_dynamic(dynamic)
    analyses = [analyze(tuned, None), analyze(base, None)]
    names = [source_name(tuned), source_name(base)]
    _check_same_architecture(analyses, names)
    parts = trained_parts(analyses[0], names[0])
    base_tensors = analyses[1].tensors
    jobs = []
    for module, layer in written_layers(parts, "kohya"):
        weight = layer.pieces[0].weight
        if not trained(layer.path) or len(layer.shape) < 2 or weight not in base_tensors:
            continue
        conv = math.prod(layer.shape[2:]) > 1
        if conv and conv_rank is None:
            continue
        jobs.append((module, layer, conv_rank if conv else rank))
    if not jobs:
        raise UsageError(f"{names[0]} has no layer a LoRA trains")
    timing = Timing()
    dtype = precision or _float_type(analyses[0].tensors)

    def run(job: tuple[str, Layer, int]) -> list[PlanEntry]:
        module, layer, layer_rank = job
        began = time.perf_counter()
        change = _change(analyses[0].value, analyses[1].value, layer)
        read = time.perf_counter()
        unchanged = change is None or not (
            np.max(np.abs(change)) > min_diff if min_diff > 0 else change.any()
        )
        if unchanged:
            timing.add(read - began, None, None)
            return []
        factors = factorize(change, layer_rank, dynamic, exact)
        timing.add(read - began, time.perf_counter() - read, factors.kept)
        return _entries(module, layer.shape, factors, float(factors.down.shape[0]), dtype)

    with ThreadPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        entries = [e for result in pool.map(run, jobs) for e in result]
    if not entries:
        raise UsageError(f"{names[0]} and {names[1]} do not differ: there is nothing to extract")
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_network_args": json.dumps({"conv_dim": str(conv_rank), "conv_alpha": str(conv_rank)})
        if conv_rank
        else "{}",
    }
    operation = {
        "op": "lora-extract",
        "from": names,
        "rank": rank,
        "conv_rank": conv_rank,
        "dynamic": list(dynamic) if dynamic else None,
    }
    return Plan(entries, record(metadata, operation), tuned.origin), timing


def _float_type(tensors: dict[str, Tensor]) -> DType:
    """The 16-bit type the model is in (fp16 unless it is bf16), for the LoRA's factors."""
    bf16 = sum(t.nbytes for t in tensors.values() if t.dtype.name == "BF16")
    f16 = sum(t.nbytes for t in tensors.values() if t.dtype.name == "F16")
    return DTYPES["BF16"] if bf16 > f16 else DTYPES["F16"]


def _change(tuned, base, layer: Layer) -> np.ndarray | None:  # type: ignore[no-untyped-def]
    """A layer's `tuned - base` as float32 (rows, numel of a row), in its naming's row order;
    None where the two are the same bytes (an untrained text encoder: no float work)."""
    out = np.empty((layer.rows, math.prod(layer.row_shape)), np.float32)
    same = True
    for piece, start in zip(layer.pieces, layer.starts, strict=True):
        a, b = (read_all(side(piece.weight)) for side in (tuned, base))
        rows = slice(piece.start, piece.stop)
        a, b = a.reshape(a.shape[0], -1)[rows], b.reshape(b.shape[0], -1)[rows]
        if a.dtype == b.dtype and a.tobytes() == b.tobytes():  # copies and a memcmp: fast
            out[start : start + len(a)] = 0
            continue
        same = False
        out[start : start + len(a)] = difference(a, b)
    return None if same else out


def _entries(
    module: str, shape: tuple[int, ...], factors: Factors, alpha: float, dtype: DType
) -> list[PlanEntry]:
    """sd-scripts' three tensors of a layer: lora_down (conv kernels in it), lora_up, alpha."""
    r = factors.down.shape[0]
    ones = (1,) * (len(shape) - 2)
    down = factors.down.reshape(r, *shape[1:])
    up = factors.up.reshape(shape[0], r, *ones)
    result = []
    for name, values in (("lora_down.weight", down), ("lora_up.weight", up)):
        typed = convert_values(np.ascontiguousarray(values), dtype)
        ref = TensorRef.from_array(f"{module}.{name}", typed, dtype)
        result.append(PlanEntry(ref.name, ref, dtype))
    alpha_ref = TensorRef.from_array(
        f"{module}.alpha", convert_values(np.array(alpha, np.float32), dtype), dtype
    )
    result.append(PlanEntry(alpha_ref.name, alpha_ref, dtype))
    return result


def lora_resize(
    lora: Source,
    rank: int,
    dynamic: tuple[str, float] | None = None,
    precision: DType | None = None,
) -> tuple[Plan, Timing]:
    """The LoRA with each LoRA/LoCon layer at `rank` (or fewer, by `dynamic`)."""
    if rank < 1:
        raise UsageError("--rank is 1 or more")
    check_dynamic(dynamic)
    name = source_name(lora)
    modules, others = modules_of(dict(lora.tensors), name)
    if not modules:
        raise UsageError(f"{name} is not a LoRA: no LoRA, LoHa or LoKr layers in it")
    for module in modules.values():
        if module.family != "lora" or "mid" in module.parts or "magnitude" in module.parts:
            raise UsageError(
                f"{name}: layer {module.name} is {module.label}; resize keeps LoRA and LoCon "
                "layers (without DoRA or a Tucker core)"
            )
    timing = Timing()
    first = next(iter(modules.values())).parts["down"]
    dtype = precision or (first.dtype if first.dtype.is_float else DTYPES["F16"])

    def run(module: Module) -> list[PlanEntry]:
        began = time.perf_counter()
        up, down = f32(module.parts["up"]), f32(module.parts["down"])
        read = time.perf_counter()
        shape = (up.shape[0], *down.shape[1:])
        up2, down2 = up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)
        factors = refactorize(up2, down2, rank, dynamic)
        timing.add(read - began, time.perf_counter() - read, factors.kept)
        alpha = module.scale * factors.down.shape[0]
        return _entries(module.name, shape, factors, alpha, dtype)

    with ThreadPoolExecutor(max(1, min(len(modules), os.cpu_count() or 1))) as pool:
        entries = [e for result in pool.map(run, modules.values()) for e in result]
    for other in others:  # what is no layer (sd-scripts' bundled embeddings) stays as it is
        ref = lora.tensors[other]
        entries.append(PlanEntry(other, ref, ref.dtype))  # type: ignore[arg-type]
    metadata = dict(lora.metadata)
    metadata["ss_network_dim"] = str(rank)
    metadata.pop("ss_network_alpha", None)
    operation = {"op": "lora-resize", "rank": rank, "dynamic": list(dynamic) if dynamic else None}
    return Plan(entries, record(metadata, operation), lora.origin), timing
