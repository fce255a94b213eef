"""Components, classes and architectures, built from data/registry.json and the key lists.

Nothing here knows a particular architecture: adding one is a key list and a line of JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any

from . import keycache, keylists
from .derive import lora_keys
from .keylists import DATA

Key = tuple[str, tuple[int, ...]]  # (tensor name, shape); -1 in a shape is a free dimension


@dataclass(frozen=True)
class Component:
    """A set of (key, shape) that makes up one part of a model, e.g. the SD-v1 UNET.

    Its key list is parsed on first use: there are 100+ lists with 65k keys in all, and parsing
    them all would cost a quarter of a second at every start, while a file can only match the
    few components whose `roots` (first name segments) it has.
    """

    name: str
    cls: str
    prefix: str  # what the keys carry inside a full checkpoint
    key_list: str  # the data file (stem) with its keys
    roots: frozenset[str]  # every key name's root (keylists.root_of), without prefix
    optional_names: frozenset[str] = frozenset()  # keys it may lack
    ema_of: str | None = None  # an EMA copy: the component it copies, keys without their dots
    subset: bool = False  # found from any of its keys (a LoRA trains some modules, not all)
    # How a file of this component alone is named where users load it: (the component whose
    # keys it then has, the prefix its keys get). SD-v1's CLIP is written as a CLIP-L file
    # (`text_model.` + keys), as ComfyUI's CLIP loader and transformers expect it.
    standalone: tuple[str, str] | None = None
    note: str | None = None  # what the Basic report says when it is found ({renamed}: a count)
    family: str | None = None  # LoRA, LoHa, LoKr: how the report names an adapter
    # Keys made by a rule from `key_list` (derive.py): the trainer's format (registry
    # `lora_formats`); not part of equality, so the frozen dataclass still hashes.
    derived_form: Mapping[str, Any] | None = field(default=None, compare=False)

    @cached_property
    def keys(self) -> frozenset[Key]:
        """Every key the component may have, without prefix."""
        if self.derived_form is None:
            return frozenset(keylists.load(self.key_list))
        form = self.derived_form
        # Made from its base list by the registry's rule: cached as a list of its own.
        sources = (DATA / f"{self.key_list}.txt", DATA / "registry.json")
        derived = keycache.cached(
            f"derived.{self.name}", sources, lambda: lora_keys(keylists.load(self.key_list), form)
        )
        return frozenset(derived)

    @cached_property
    def required(self) -> frozenset[Key]:
        """The keys it must have."""
        return frozenset(k for k in self.keys if k[0] not in self.optional_names)

    @cached_property
    def free_shapes(self) -> dict[str, dict[int, tuple[int, ...]]]:
        """Key name (bare and prefixed) -> {rank: shape} for shapes with free dimensions (-1:
        a LoRA's rank); by rank, as one name may be 4-D in one list and 2-D in another."""
        free: dict[str, dict[int, tuple[int, ...]]] = {}
        for name, shape in self.keys:
            if -1 in shape:
                free.setdefault(name, {})[len(shape)] = shape
                free.setdefault(self.prefix + name, {})[len(shape)] = shape
        return free

    @cached_property
    def _prefixed_keys(self) -> frozenset[Key]:
        return frozenset((self.prefix + name, shape) for name, shape in self.keys)

    @cached_property
    def _prefixed_required(self) -> frozenset[Key]:
        return frozenset((self.prefix + name, shape) for name, shape in self.required)

    def keyset(self, prefixed: bool, required_only: bool = False) -> frozenset[Key]:
        """Its keys (or only the required ones), with its prefix or without; made once."""
        if not prefixed or not self.prefix:
            return self.required if required_only else self.keys
        return self._prefixed_required if required_only else self._prefixed_keys

    def may_match(self, names: NameIndex) -> bool:
        """Whether a file with these tensor names has any key of this component, with its
        prefix or without: if not, it can neither be found nor be a near miss."""
        return not self.roots.isdisjoint(names.roots("")) or (
            bool(self.prefix) and not self.roots.isdisjoint(names.roots(self.prefix))
        )


class NameIndex:
    """A file's tensor names by first segment, after any prefix asked for (cached).

    Names are bucketed by their first dotted segment once, so that the roots under a prefix
    are looked for among the names that start like it (a checkpoint's VAE prefix does not walk
    its UNET's names): one pass over a file's names in all, not one per prefix in the registry.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._buckets: dict[str, list[str]] = {}
        for name in names:
            self._buckets.setdefault(name.partition(".")[0], []).append(name)
        self._roots: dict[str, set[str]] = {}

    def roots(self, prefix: str) -> set[str]:
        found = self._roots.get(prefix)
        if found is None:
            if not prefix:
                found = {root_of(name) for bucket in self._buckets.values() for name in bucket}
            else:
                skip = len(prefix)
                bucket = self._buckets.get(prefix.partition(".")[0], ())
                found = {root_of(n[skip:]) for n in bucket if n.startswith(prefix)}
            self._roots[prefix] = found
        return found


root_of = keylists.root_of  # a key name's root, as keylists.roots finds them in a list


@dataclass(frozen=True)
class Architecture:
    """A named set of classes, found when a component of each class is found."""

    name: str
    classes: tuple[str, ...]  # each must have a component for the architecture to be found
    prefixed: bool  # components carry their prefix (full checkpoints) or not (component files)
    optional: frozenset[Key]  # keys the architecture allows besides its components
    partial: bool = False  # a *-BROKEN result: hidden when a complete SD- architecture is found
    hidden_by: str | None = None  # not listed when this other architecture is found
    prefer_superset: bool = False  # of two components of a class, only the larger is listed
    kind: str | None = None  # what it is to a user (checkpoint, vae, lora, ...); None: partial
    modelspec: dict[str, str] | None = None  # ModelSpec architecture and implementation
    optional_classes: tuple[str, ...] = ()  # kept when present (SD3/Flux text encoders)
    only: dict[str, tuple[str, ...]] | None = None  # class -> the components allowed for it
    base: str | None = None  # what a LoRA applies to
    precision: str = "F16"  # the 16-bit type its weights are trained and shipped in (`auto`)
    slots: dict[str, str] = field(default_factory=dict)  # class -> the component named as ours
    # Reported with its component's name (`Flux-v1 (Flux-v1-Dev)`): a bare file whose
    # variants are components of one class, where the architecture's name alone says too little.
    variant_named: bool = False

    @property
    def all_classes(self) -> tuple[str, ...]:
        return self.classes + self.optional_classes

    def allows(self, cls: str, component: str) -> bool:
        return self.only is None or cls not in self.only or component in self.only[cls]


@dataclass(frozen=True)
class Registry:
    components: dict[str, Component]
    architectures: dict[str, Architecture]
    preferred: tuple[str, ...]  # chosen first, in this order, when found
    known: dict[str, dict[str, int]]  # metric values of known components, by part
    # component -> {class it can stand in for: (the component it then is, prefix to remove)}:
    # a CLIP-L file imported as SD-v1's CLIP (the inverse of Component.standalone).
    serving: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    metric_parts: dict[str, str] = field(default_factory=dict)  # class -> unet, vae or clip
    # (ending, as the lists spell it): a name some tool writes otherwise, matched as the lists
    # have it and kept as the file has it (ComfyUI's RMSNorm `.weight` for BFL's `.scale`).
    aliases: tuple[tuple[str, str], ...] = ()
    # component or class -> [(a word of the file name, the variant it suggests)], first wins:
    # what keys cannot tell (Kontext from dev, Turbo from Base), a hint, never a certainty.
    name_hints: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    # class -> the metadata key in which its files carry their own configuration (LTX-2).
    config_metadata: dict[str, str] = field(default_factory=dict)
    # (whole name, as a regular expression; the name the lists have): names a file chooses
    # itself, as cloneofsimo's LoRAs name a learned token's embedding by the token (`<s1>`).
    name_patterns: tuple[tuple[re.Pattern[str], str], ...] = ()
    # GGUF (ComfyUI-GGUF's conventions): class -> general.architecture; that -> the name
    # parts kept in F32; the architectures reshaped to rows of 256.
    gguf_arch: dict[str, str] = field(default_factory=dict)
    gguf_high_precision: dict[str, tuple[str, ...]] = field(default_factory=dict)
    gguf_reshape: frozenset[str] = frozenset()
    # Quantized layers in safetensors files: companions, markers, weight spellings
    # (quantization.py).
    quantization: dict[str, Any] = field(default_factory=dict)
    # How LoRA trainers name a component's layers (lora/names.py): the prefix of each role,
    # which classes are text encoders of which role, and per component the rules that turn
    # its names into the other layout's (SD into diffusers, BFL's fused qkv into to_q/k/v).
    lora_names: dict[str, Any] = field(default_factory=dict)

    @property
    def renames(self) -> bool:
        """Whether any file name can be spelled otherwise in the lists."""
        return bool(self.aliases or self.name_patterns)

    @cached_property
    def _alias_endings(self) -> tuple[str, ...]:
        return tuple(ending for ending, _ in self.aliases)

    def canonical(self, name: str) -> str:
        """The name as the key lists spell it (the file's own name if no alias applies)."""
        if name.endswith(self._alias_endings):  # one C-level test for the usual no
            for ending, listed in self.aliases:
                if name.endswith(ending):
                    return name[: -len(ending)] + listed
        for pattern, listed in self.name_patterns:
            if pattern.fullmatch(name):
                return listed
        return name

    def classes_of(self, names: set[str]) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for name in names:
            result.setdefault(self.components[name].cls, []).append(name)
        return result


@cache
def load_registry() -> Registry:
    """The registry shipped with the package (read once)."""
    raw = json.loads((DATA / "registry.json").read_text(encoding="utf-8"))
    optional_sets = {
        name: frozenset((key, tuple(shape)) for key, shape in keys)
        for name, keys in raw["optional_keys"].items()
    }
    components = {
        name: Component(
            name,
            spec["class"],
            spec["prefix"],
            _key_list(spec, raw),
            _roots(spec, raw),
            frozenset(spec.get("optional", [])),
            spec.get("ema_of"),
            spec.get("subset", False),
            tuple(spec["standalone"]) if "standalone" in spec else None,  # type: ignore[arg-type]
            spec.get("note"),
            spec.get("family"),
            _derived_form(spec, raw),
        )
        for name, spec in raw["components"].items()
    }
    architectures = {
        name: Architecture(
            name,
            tuple(spec["classes"]),
            spec["prefixed"],
            optional_sets.get(spec.get("optional", ""), frozenset()),
            spec.get("partial", False),
            spec.get("hidden_by"),
            spec.get("prefer_superset", False),
            spec.get("kind"),
            spec.get("modelspec"),
            tuple(spec.get("optional_classes", ())),
            {cls: tuple(names) for cls, names in spec["only"].items()} if "only" in spec else None,
            spec.get("base"),
            spec.get("precision", "F16"),
            dict(spec.get("slots", {})),
            spec.get("variant_named", False),
        )
        for name, spec in raw["architectures"].items()
    }
    serving: dict[str, dict[str, tuple[str, str]]] = {}
    for name, component in components.items():
        if component.standalone:
            other, prefix = component.standalone
            serving.setdefault(other, {}).setdefault(component.cls, (name, prefix))
    return Registry(
        components,
        architectures,
        tuple(raw["preferred"]),
        raw["known"],
        serving,
        dict(raw.get("metric_parts", {})),
        tuple((ending, listed) for ending, listed in raw.get("aliases", [])),
        {cls: tuple((w, v) for w, v in pairs) for cls, pairs in raw.get("name_hints", {}).items()},
        dict(raw.get("config_metadata", {})),
        tuple((re.compile(pattern), listed) for pattern, listed in raw.get("name_patterns", [])),
        dict(raw.get("gguf", {}).get("architectures", {})),
        {a: tuple(k) for a, k in raw.get("gguf", {}).get("high_precision", {}).items()},
        frozenset(raw.get("gguf", {}).get("reshape", [])),
        dict(raw.get("quantization", {})),
        dict(raw.get("lora_names", {})),
    )


def _key_list(spec: dict, raw: dict) -> str:
    """The list a component's keys come from: its own, or the base it is derived from."""
    if "derive" in spec:
        return raw["components"][spec["derive"][0]]["keys"]
    return spec["keys"]


def _derived_form(spec: dict, raw: dict) -> dict[str, Any] | None:
    return raw["lora_formats"][spec["derive"][1]] if "derive" in spec else None


def _roots(spec: dict, raw: dict) -> frozenset[str]:
    """A component's roots, from the index (keylists)."""
    return keylists.derived_roots(spec, raw) if "derive" in spec else keylists.roots(spec["keys"])
