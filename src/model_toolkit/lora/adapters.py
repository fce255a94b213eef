"""A LoRA file's layers and the change each makes to its model layer, as the trainers define it.

Per layer (`module`), the delta to add to the model's weight, in float32, times the layer's
scale (alpha / rank where the trainer has one):
- LoRA/LoCon (sd-scripts, PEFT, LyCORIS): `up @ down`, conv kernels in `down`, LyCORIS's Tucker
  core (`lora_mid`) between them;
- LoHa (LyCORIS): `(w1a @ w1b) * (w2a @ w2b)`, Tucker cores `hada_t1/t2` where present;
- LoKr (LyCORIS): `kron(w1, w2)`, each factor whole or as a product (`_a @ _b`, core `t2`);
- full (LyCORIS `diff`, `diff_b`) and norm (`w_norm`, `b_norm`): the change itself;
- DoRA (`dora_scale`, PEFT's `lora_magnitude_vector`): the weight-decomposed result, which
  needs the model's weight (apply.py).

Rows are computed on demand (`rows(start, stop)`), so that a layer's delta is never whole in
memory where its form allows (LoRA, LoHa, full); the others are computed whole once.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..model import Tensor, read_all

# Suffix -> (the part it is, the family it belongs to); the longest suffix that fits wins.
PARTS: dict[str, tuple[str, str]] = {
    "lora_down.weight": ("down", "lora"),
    "lora_up.weight": ("up", "lora"),
    "lora_mid.weight": ("mid", "lora"),
    "lora_A.weight": ("down", "lora"),
    "lora_B.weight": ("up", "lora"),
    "lora_B.bias": ("up_bias", "lora"),
    "lora.down.weight": ("down", "lora"),
    "lora.up.weight": ("up", "lora"),
    "down.weight": ("down", "lora"),
    "up.weight": ("up", "lora"),
    "alpha": ("alpha", ""),
    "dora_scale": ("magnitude", ""),
    "lora_magnitude_vector": ("magnitude", ""),
    "hada_w1_a": ("w1a", "loha"),
    "hada_w1_b": ("w1b", "loha"),
    "hada_w2_a": ("w2a", "loha"),
    "hada_w2_b": ("w2b", "loha"),
    "hada_t1": ("t1", "loha"),
    "hada_t2": ("t2", "loha"),
    "lokr_w1": ("w1", "lokr"),
    "lokr_w1_a": ("w1a", "lokr"),
    "lokr_w1_b": ("w1b", "lokr"),
    "lokr_w2": ("w2", "lokr"),
    "lokr_w2_a": ("w2a", "lokr"),
    "lokr_w2_b": ("w2b", "lokr"),
    "lokr_t2": ("t2", "lokr"),
    "diff": ("diff", "full"),
    "diff_b": ("diff_b", "full"),
    "w_norm": ("diff", "norm"),
    "b_norm": ("diff_b", "norm"),
}
# Adapter families we recognise but do not merge: named in the refusal.
OTHER_FAMILIES = {
    "oft_blocks": "OFT",
    "oft_diag": "OFT",
    "oft_R": "OFT",
    "boft_R": "BOFT",
    "a1.weight": "GLoRA",
    "a2.weight": "GLoRA",
    "b1.weight": "GLoRA",
    "b2.weight": "GLoRA",
    "on_input": "IA3",
}
_BY_LENGTH = sorted(PARTS, key=len, reverse=True)
FAMILY_NAMES = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "full": "full", "norm": "norm"}


def split_name(name: str) -> tuple[str, str] | None:
    """(module, suffix) for a LoRA tensor name, or None if it is no adapter part."""
    for suffix in _BY_LENGTH:
        if name.endswith("." + suffix):
            return name[: -len(suffix) - 1], suffix
    return None


def other_family(name: str) -> str | None:
    for suffix, family in OTHER_FAMILIES.items():
        if name.endswith("." + suffix):
            return family
    return None


def f32(tensor: Tensor) -> np.ndarray:
    return read_all(tensor).astype(np.float32)


@dataclass
class Module:
    """One layer of a LoRA file: its parts by role (`down`, `up`, `w1a`...)."""

    name: str
    parts: dict[str, Tensor] = field(default_factory=dict)
    family: str = ""
    tensor_names: list[str] = field(default_factory=list)  # the file's names of its parts
    _whole: np.ndarray | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def label(self) -> str:
        kind = FAMILY_NAMES.get(self.family, self.family)
        return f"{kind} + DoRA" if "magnitude" in self.parts else kind

    @property
    def rank(self) -> int | None:
        """The rank alpha is divided by, where the family has one (None: scale 1)."""
        p = self.parts
        if self.family == "lora":
            return int(p["down"].shape[0])
        if self.family == "loha":
            return int(p["w1b"].shape[0])
        if self.family == "lokr":
            if "w1b" in p:
                return int(p["w1b"].shape[0])
            if "w2b" in p:
                return int(p["w2b"].shape[0])
        return None

    @property
    def alpha(self) -> float | None:
        if "alpha" not in self.parts:
            return None
        return float(f32(self.parts["alpha"]).reshape(-1)[0])

    @property
    def scale(self) -> float:
        """alpha / rank as the trainers scale it; 1 without an alpha (PEFT files: alpha = r),
        and for LoKr with both factors whole (LyCORIS ignores alpha then)."""
        rank, alpha = self.rank, self.alpha
        if rank is None or alpha is None or rank == 0:
            return 1.0
        return alpha / rank

    def check(self) -> None:
        """The parts its family needs are there."""
        needs = {
            "lora": ("down", "up"),
            "loha": ("w1a", "w1b", "w2a", "w2b"),
            "lokr": (),
            "full": (),
            "norm": (),
        }[self.family]
        missing = [n for n in needs if n not in self.parts]
        if self.family == "lokr":
            if "w1" not in self.parts and not {"w1a", "w1b"} <= set(self.parts):
                missing.append("lokr_w1")
            if "w2" not in self.parts and not {"w2a", "w2b"} <= set(self.parts):
                missing.append("lokr_w2")
        if self.family in ("full", "norm") and not ({"diff", "diff_b"} & set(self.parts)):
            missing.append("diff")
        if missing:
            raise UsageError(f"LoRA layer {self.name} lacks {', '.join(missing)}")

    def delta_shape(self) -> tuple[int, int]:
        """(rows, numel of a row) of the layer's delta, from its parts' shapes alone."""
        p = {k: tuple(int(n) for n in v.shape) for k, v in self.parts.items()}
        if self.family in ("full", "norm"):
            diff = p.get("diff", (0,))
            return diff[0], math.prod(diff[1:])
        if self.family == "lora":
            if "mid" in p:
                return p["up"][0], p["down"][1] * math.prod(p["mid"][2:])
            return p["up"][0], math.prod(p["down"][1:])
        if self.family == "loha":
            if "t1" in p:  # LyCORIS's Tucker form: w1a is [rank, out]
                return p["w1a"][1], p["w1b"][1] * math.prod(p["t1"][2:])
            return p["w1a"][0], math.prod(p["w1b"][1:])
        w1 = p["w1"] if "w1" in p else (p["w1a"][0], p["w1b"][1])
        if "w2" in p:
            w2 = p["w2"]
        elif "t2" in p:
            w2 = (p["w2a"][1], p["w2b"][1], *p["t2"][2:])
        else:
            w2 = (p["w2a"][0], *p["w2b"][1:])
        return w1[0] * w2[0], w1[1] * math.prod(w2[1:])

    @property
    def changes_weight(self) -> bool:
        """False for a layer that changes its bias alone (a LyCORIS `diff_b` by itself)."""
        return self.family not in ("full", "norm") or "diff" in self.parts

    @property
    def whole_only(self) -> bool:
        """Its delta is computed whole, not by rows (LoKr, the Tucker forms)."""
        p = self.parts
        return self.family == "lokr" or "mid" in p or bool({"t1", "t2"} & set(p))

    def check_fits(self, shape: tuple[int, ...]) -> None:
        """A delta of another size than the model layer (`shape`) is refused."""
        rows, row = self.delta_shape()
        if rows != shape[0] or row != math.prod(shape[1:]):
            raise UsageError(
                f"LoRA layer {self.name} does not fit the model: its change is "
                f"[{rows}, {row}], the layer is {list(shape)}"
            )

    def rows(self, start: int, stop: int, shape: tuple[int, ...]) -> np.ndarray:
        """Rows [start, stop) of the layer's delta, scaled, as float32 of shape
        (stop - start, numel of a row); `shape` is the model layer's (its rows in this naming).
        A delta of another size than the layer is refused."""
        self.check_fits(shape)
        if self.family in ("full", "norm"):
            diff = self.parts["diff"]
            return f32(diff).reshape(diff.shape[0], -1)[start:stop]
        if self.family == "lora" and "mid" not in self.parts:
            up, down = self.parts["up"], self.parts["down"]
            upper = f32(up).reshape(up.shape[0], -1)[start:stop]
            delta = upper @ f32(down).reshape(down.shape[0], -1)
            delta *= np.float32(self.scale)  # in place: the same rounding, one array less
            return delta
        if self.family == "loha" and not {"t1", "t2"} & set(self.parts):
            p = self.parts
            w1a, w2a = f32(p["w1a"])[start:stop], f32(p["w2a"])[start:stop]
            w1b = f32(p["w1b"]).reshape(p["w1b"].shape[0], -1)
            w2b = f32(p["w2b"]).reshape(p["w2b"].shape[0], -1)
            delta = w1a @ w1b
            delta *= w2a @ w2b
            delta *= np.float32(self.scale)
            return delta
        return self.whole()[start:stop]

    def bias_rows(self, start: int, stop: int) -> np.ndarray | None:
        """Rows [start, stop) of the change to the layer's bias, if the layer has one."""
        for part in ("diff_b", "up_bias"):
            if part in self.parts:
                values = f32(self.parts[part]).reshape(-1)
                scale = np.float32(self.scale) if part == "up_bias" else np.float32(1)
                return values[start:stop] * scale
        return None

    def whole(self) -> np.ndarray:
        """The whole scaled delta as (rows, numel of a row), computed once (LoKr, the Tucker
        forms: their rows are not cheaper than the whole)."""
        with self._lock:
            if self._whole is None:
                delta = self._compute()
                self._whole = delta.reshape(delta.shape[0], -1) * np.float32(self.scale)
            return self._whole

    def release(self) -> None:
        self._whole = None

    def _compute(self) -> np.ndarray:
        p = self.parts
        if self.family == "lora":  # with LyCORIS's Tucker core
            up, down, mid = f32(p["up"]), f32(p["down"]), f32(p["mid"])
            up2 = up.reshape(up.shape[0], -1)
            down2 = down.reshape(down.shape[0], -1)
            return np.einsum("ijkl,jr,pi->prkl", mid, down2, up2)
        if self.family == "loha":
            return _hadamard_factor(p, "1") * _hadamard_factor(p, "2")
        if self.family == "lokr":
            w1 = f32(p["w1"]) if "w1" in p else f32(p["w1a"]) @ f32(p["w1b"])
            if "w2" in p:
                w2 = f32(p["w2"])
            elif "t2" in p:
                w2 = np.einsum("ijkl,ip,jr->prkl", f32(p["t2"]), f32(p["w2a"]), f32(p["w2b"]))
            else:
                w2 = f32(p["w2a"]) @ f32(p["w2b"]).reshape(p["w2b"].shape[0], -1)
            if w2.ndim == 2 and w1.ndim == 2:
                return np.kron(w1, w2)
            w1 = w1.reshape(*w1.shape, *([1] * (w2.ndim - 2)))
            return np.kron(w1, w2)
        raise AssertionError(self.family)


def _hadamard_factor(p: dict[str, Tensor], i: str) -> np.ndarray:
    a, b = f32(p[f"w{i}a"]), f32(p[f"w{i}b"])
    core = p.get(f"t{i}")
    if core is not None:  # LyCORIS's Tucker form: a is [rank, out]
        return np.einsum("ijkl,jr,ip->prkl", f32(core), b.reshape(b.shape[0], -1), a)
    return a @ b.reshape(b.shape[0], -1)


def modules_of(tensors: dict[str, Tensor], source: str) -> tuple[dict[str, Module], list[str]]:
    """A LoRA file's layers by module name, and the names of tensors that are no adapter part.
    Families it uses that are not merged here (OFT, GLoRA, IA3) are refused in one line."""
    modules: dict[str, Module] = {}
    others: list[str] = []
    for name, tensor in tensors.items():
        family = other_family(name)
        if family is not None:
            raise UsageError(f"{source} is a {family} adapter, which lora apply does not merge")
        split = split_name(name)
        if split is None:
            others.append(name)
            continue
        module_name, suffix = split
        part, part_family = PARTS[suffix]
        module = modules.setdefault(module_name, Module(module_name))
        module.parts[part] = tensor
        module.tensor_names.append(name)
        if part_family:
            mixed = {module.family, part_family}
            if module.family and len(mixed) > 1 and mixed != {"full", "norm"}:
                raise UsageError(f"LoRA layer {module_name} mixes {' and '.join(sorted(mixed))}")
            module.family = module.family or part_family
    for name in [m for m, module in modules.items() if not module.family]:
        # An alpha or magnitude with no layer of its own: not an adapter part after all.
        others.extend(modules.pop(name).tensor_names)
    for module in modules.values():
        module.check()
    return modules, others
