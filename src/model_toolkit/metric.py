"""The original toolkit's metric, and the known components it recognises.

The metric (`UUUU/VVVV/CCCC`) sums `sigmoid(w) - 0.5` over the UNET, VAE and CLIP weights, with
`w` rounded to float16, and compares each sum with SD-v1's. Since every weight is a float16 value,
a tensor's sum is a lookup of its float16 bit patterns in a 65536-entry table of torch-exact
sigmoids, summed: one streaming pass, no transcendental function per element.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np

from . import casting
from .analysis import Analysis
from .architectures.detect import allowed_keys
from .architectures.registry import load_registry
from .casting import cast
from .dtypes import DTYPES
from .execute import cast_threads, run_in_order
from .model import Tensor, chunk_work
from .sigmoid import VECTOR_BLOCK, half_tables

T = TypeVar("T")


def metric_classes(part: str) -> set[str]:
    """The classes whose weights the metric sums into `part` (registry.json metric_parts)."""
    return {cls for cls, into in load_registry().metric_parts.items() if into == part}


BASELINE = {"unet": -6131.5400, "vae": 17870.7051, "clip-v1": -2097.8596, "clip": -8757.5630}
SCALE = {"unet": 10000, "vae": 10000, "clip-v1": 1000000, "clip": 10000}
WRAP = 10000


@dataclass(frozen=True)
class Metric:
    string: str  # "UUUU/VVVV/CCCC", "----" for an absent part
    unet: int | None
    vae: int | None
    clip: int | None

    def as_dict(self) -> dict[str, object]:
        return {"string": self.string, "unet": self.unet, "vae": self.vae, "clip": self.clip}


def _chunk_sum(chunk: np.ndarray, cut: int) -> float:
    """sum(sigmoid(x) - 0.5) over a chunk: elements before `cut` take torch's vector path,
    the rest its scalar path. A NaN weight makes the sum NaN, as it does in torch."""
    vector_table, scalar_table = half_tables()
    kernels = casting.kernels
    if kernels is not None and chunk.dtype in (np.float32, np.float16):
        # One compiled pass (rounding included), no float16 copy of the chunk.
        half = chunk.dtype == np.float16
        return kernels.table_sum(chunk[:cut], vector_table, half) + kernels.table_sum(
            chunk[cut:], scalar_table, half
        )
    bits = cast(chunk, DTYPES["F16"]).view(np.uint16)
    return float(
        vector_table[bits[:cut]].sum(dtype=np.float64)
        + scalar_table[bits[cut:]].sum(dtype=np.float64)
    )


# Larger than the writers' chunks: after each chunk its mapped pages are released (madvise),
# which flushes the TLB of every core the process runs on; 16 MiB chunks make 4x fewer flushes
# (~10% off the pass on 2 cores) and still bound the mapped pages to a few chunks per thread.
METRIC_CHUNK_BYTES = 16 * 1024 * 1024


def _chunk_jobs(ref: Tensor) -> Iterator[tuple[int, Callable[[], float]]]:
    """Per chunk of a tensor, its length and the work that reads it and sums it (a file's
    tensor is summed where its bytes lie, without a copy)."""
    tail_start = ref.numel - ref.numel % VECTOR_BLOCK  # torch's last n % 16 go one by one
    position = 0
    for count, work_on in chunk_work(ref, METRIC_CHUNK_BYTES):
        cut = max(0, min(count, tail_start - position))
        yield count, partial(work_on, partial(_chunk_sum, cut=cut))
        position += count


BATCH_ELEMENTS = 1 << 20  # small tensors (biases, norms) are summed many to a job


def _batches(refs: list[Tensor]) -> Iterator[Callable[[], list[tuple[int, float]]]]:
    """Every tensor's chunk jobs, in order, grouped so that each batch has about a chunk's worth
    of elements: a job per bias would cost more in handing it to a thread than in summing."""
    batch: list[Callable[[], tuple[int, float]]] = []
    size = 0
    for index, ref in enumerate(refs):
        for count, job in _chunk_jobs(ref):
            batch.append(partial(_tagged, index, job))
            size += count
            if size >= BATCH_ELEMENTS:
                yield partial(_run_all, batch)
                batch, size = [], 0
    if batch:
        yield partial(_run_all, batch)


def _run_all(jobs: list[Callable[[], T]]) -> list[T]:
    return [job() for job in jobs]


def _tagged(index: int, job: Callable[[], float]) -> tuple[int, float]:
    return index, job()


def tensor_sums(refs: list[Tensor]) -> list[np.float32]:
    """`torch.sum(torch.sigmoid(t.half().float()) - 0.5)` of each tensor, as float32: chunks
    are read and summed on all cores, and added up in file order."""
    totals = [0.0] * len(refs)
    for batch in run_in_order(_batches(refs), max(1, cast_threads())):
        for index, value in batch:
            totals[index] += value
    return [np.float32(total) for total in totals]


def _score(total: np.float32, part: str) -> int | None:
    """int(|sum / baseline - 1| * scale) in float32, as the original's torch arithmetic, wrapped
    below 10000 by steps of 5000. None when the weights hold NaN or inf."""
    if not np.isfinite(total):
        return None
    ratio = total / np.float32(BASELINE[part]) - np.float32(1)
    n = int(np.abs(ratio) * np.float32(SCALE[part]))
    while n >= WRAP:
        n -= WRAP // 2
    return n


ALL_PARTS = frozenset({"unet", "vae", "clip"})


def compute_metric(analysis: Analysis, parts_wanted: frozenset[str] = ALL_PARTS) -> Metric:
    """Stream the tensors the metric covers, in file order, and score each part (only the
    parts wanted: naming a known VAE or CLIP needs neither the UNET nor its reading time)."""
    if analysis.detection.resolved is None:
        return Metric("----/----/----", None, None, None)
    parts = metric_tensors(analysis, parts_wanted)
    sums = {"unet": np.float32(0), "vae": np.float32(0), "clip": np.float32(0)}
    for (part, _), value in zip(parts, tensor_sums([ref for _, ref in parts]), strict=True):
        sums[part] = np.float32(sums[part] + value)  # float32, in file order, as the original
    clip_part = "clip-v1" if "CLIP-v1" in analysis.detection.components else "clip"
    scores: dict[str, int | None] = {
        "unet": _score(sums["unet"], "unet") if sums["unet"] != 0 else None,
        "vae": _score(sums["vae"], "vae") if sums["vae"] != 0 else None,
        "clip": _score(sums["clip"], clip_part) if sums["clip"] != 0 else None,
    }
    # "----": the part is absent; "NaN!": its weights hold NaN or inf (a broken merge).
    text = "/".join(
        "----" if sums[part] == 0 else "NaN!" if value is None else f"{value:04}"
        for part, value in scores.items()
    )
    return Metric(text, scores["unet"], scores["vae"], scores["clip"])


def metric_tensors(
    analysis: Analysis, parts_wanted: frozenset[str] = ALL_PARTS
) -> list[tuple[str, Tensor]]:
    """The tensors the metric sums, in file order, each with its part (unet, vae, clip)."""
    detection = analysis.detection
    if detection.resolved is None:
        return []
    registry = load_registry()
    resolved = {cls: [name] for cls, name in detection.components.items()}

    def keys(classes: set[str]) -> set:
        return allowed_keys(detection.resolved, resolved, registry, classes)

    unet_keys, vae_keys, clip_keys = (keys(metric_classes(p)) for p in ("unet", "vae", "clip"))
    parts: list[tuple[str, Tensor]] = []
    for name in analysis.tensors:
        key = detection.keys[name]
        if key in unet_keys and "unet" in parts_wanted:
            parts.append(("unet", analysis.value(name)))
        if key in vae_keys and ("encoder." in name or "decoder." in name):
            parts.append(("vae", analysis.value(name)))
        if key in clip_keys and "mlp." in name and ".23." not in name:
            parts.append(("clip", analysis.value(name)))
    return [(part, ref) for part, ref in parts if part in parts_wanted]


def known_components(metric: Metric) -> list[str]:
    """ "NAI VAE", "SD-v1 CLIP", ...: known components whose metric is within 1 of this one."""
    known = load_registry().known
    found = []
    if metric.vae is not None:
        found += [f"{name} VAE" for name, v in known["VAE"].items() if abs(metric.vae - v) <= 1]
    if metric.clip is not None:
        for part in ("CLIP-v1", "CLIP-v2"):
            found += [
                f"{name} CLIP" for name, v in known[part].items() if abs(metric.clip - v) <= 1
            ]
    return found
