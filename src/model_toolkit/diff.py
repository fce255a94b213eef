"""Comparing two models per component class, streaming both files a chunk at a time."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .analysis import analyze
from .architectures.locate import find_component
from .model import ModelFile, values
from .operations.common import component_entries, entries_of
from .plan import PlanEntry

CHUNK_ELEMENTS = 1 << 20


@dataclass
class ClassDiff:
    cls: str  # a component class, or "other" for tensors outside every class
    status: str  # identical, different, different architecture, only in A, only in B
    component_a: str | None = None
    component_b: str | None = None
    tensors: int = 0
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    cosine_similarity: float | None = None
    mismatched_shapes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ModelDiff:
    architecture_a: str | None
    architecture_b: str | None
    classes: list[ClassDiff]
    only_in_a: list[str]
    only_in_b: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "architecture_a": self.architecture_a,
            "architecture_b": self.architecture_b,
            "classes": [c.as_dict() for c in self.classes],
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
        }


class _Totals:
    """Running sums for max/mean |a-b| and the cosine of the two weight vectors."""

    def __init__(self) -> None:
        self.count = 0
        self.abs_sum = 0.0
        self.max_abs = 0.0
        self.dot = self.norm_a = self.norm_b = 0.0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        self.count += len(a)
        if a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)):
            if a.any():  # the same values: no difference, and |a| = |b|
                a64 = a.astype(np.float64)
                norm = float(np.dot(a64, a64))
                self.dot, self.norm_a, self.norm_b = (
                    self.dot + norm,
                    self.norm_a + norm,
                    self.norm_b + norm,
                )
            return
        if not a.any() and not b.any():  # zeros on both sides, in any dtype
            return
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            delta = np.abs(a64 - b64)
        if len(delta):
            self.max_abs = max(self.max_abs, float(np.max(delta)))
            self.abs_sum += float(np.sum(delta))
            self.dot += float(np.dot(a64, b64))
            self.norm_a += float(np.dot(a64, a64))
            self.norm_b += float(np.dot(b64, b64))

    def cosine(self) -> float | None:
        if self.norm_a == 0 or self.norm_b == 0:
            return 1.0 if self.norm_a == self.norm_b else 0.0
        return self.dot / math.sqrt(self.norm_a * self.norm_b)


def _chunks(entry: PlanEntry) -> Any:
    widest = max(entry.dtype.itemsize, entry.reads.dtype.itemsize)
    return values(entry, CHUNK_ELEMENTS * widest)


def _aligned(a: Any, b: Any) -> Any:
    """Pairs of equal-length chunks from two value streams whose chunks may differ in length
    (a GGUF's rows against a safetensors file's runs)."""
    a, b = iter(a), iter(b)
    left, right = next(a, None), next(b, None)
    while left is not None and right is not None:
        count = min(len(left), len(right))
        if count:
            yield left[:count], right[:count]
        left = left[count:] if len(left) > count else next(a, None)
        right = right[count:] if len(right) > count else next(b, None)
    if (left is None) != (right is None):
        raise ValueError("the tensors hold different numbers of values")


def _compare(pairs: list[tuple[str, PlanEntry, PlanEntry]], result: ClassDiff) -> None:
    totals = _Totals()
    for name, a, b in pairs:
        if tuple(a.shape) != tuple(b.shape):
            result.mismatched_shapes.append(f"{name} {list(a.shape)} vs {list(b.shape)}")
            continue
        for chunk_a, chunk_b in _aligned(_chunks(a), _chunks(b)):
            totals.add(chunk_a, chunk_b)
    result.tensors = len(pairs)
    if result.mismatched_shapes:
        result.status = "different architecture"
        return
    result.max_abs_diff = totals.max_abs
    result.mean_abs_diff = totals.abs_sum / totals.count if totals.count else 0.0
    result.cosine_similarity = totals.cosine()
    result.status = "identical" if totals.max_abs == 0 else "different"


def diff_models(model_a: ModelFile, model_b: ModelFile) -> ModelDiff:
    """Per class: identical, different weights (with how different), or absent on one side;
    then the tensors outside every class, compared by name."""
    analysis_a, analysis_b = analyze(model_a), analyze(model_b)
    entries_a, entries_b = entries_of(model_a), entries_of(model_b)
    used_a: set[str] = set()
    used_b: set[str] = set()
    classes = list(dict.fromkeys([*analysis_a.components, *analysis_b.components]))
    results = []
    for cls in classes:
        found = {}
        for side, analysis, entries, used in (
            ("a", analysis_a, entries_a, used_a),
            ("b", analysis_b, entries_b, used_b),
        ):
            if cls in analysis.components:
                spot = find_component(analysis.detection, cls, None, side)
                pairs = [
                    (key, analysis.valued(entry))
                    for key, entry in component_entries(spot, analysis, entries)
                ]
                used.update(entry.name for _, entry in pairs)
                found[side] = (spot.component.name, dict(pairs))
        result = ClassDiff(cls, "", found.get("a", (None,))[0], found.get("b", (None,))[0])
        if "a" not in found or "b" not in found:
            result.status = "only in A" if "a" in found else "only in B"
        else:
            keys_a, keys_b = found["a"][1], found["b"][1]
            common = [k for k in keys_a if k in keys_b]
            _compare([(k, keys_a[k], keys_b[k]) for k in common], result)
            if set(keys_a) != set(keys_b):
                result.status = "different architecture"
        results.append(result)
    rest_a = {n: e for n, e in entries_a.items() if n not in used_a}
    rest_b = {n: e for n, e in entries_b.items() if n not in used_b}
    common = [n for n in rest_a if n in rest_b]
    if common:
        other = ClassDiff("other", "")
        _compare([(n, rest_a[n], rest_b[n]) for n in common], other)
        results.append(other)
    return ModelDiff(
        analysis_a.architecture,
        analysis_b.architecture,
        results,
        sorted(n for n in rest_a if n not in rest_b),
        sorted(n for n in rest_b if n not in rest_a),
    )
