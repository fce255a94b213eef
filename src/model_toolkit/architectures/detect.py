"""Matching names and shapes against the registry, as the original toolkit does it.

A component is found when all its required (key, shape) pairs are present, with its prefix or
without. An architecture is found when a component of each of its classes is found in the
prefixing the architecture uses. Every near miss is recorded with its reason, in the original's
words, so that users can see why a file was not recognised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from .registry import Component, Key, NameIndex, Registry, load_registry


@dataclass(frozen=True)
class Rejection:
    """A near miss. What is missing is kept as keys and written out when a report asks: a
    checkpoint is a near miss of a dozen lists, thousands of keys each, and identifying it
    shows none of them."""

    name: str  # the component or architecture that was not found
    reason: str  # "Missing required keys (N of M)" or "Missing required classes"
    missing_keys: frozenset[Key] = frozenset()
    classes: tuple[str, ...] = ()  # the classes missing, for an architecture
    # The file's shapes, to say what was found under a missing key's name.
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict, compare=False)

    @cached_property
    def missing(self) -> list[str]:
        """Each missing key as `key [shape]` (a shape mismatch says what was found), or the
        missing class names."""
        if self.classes:
            return list(self.classes)
        return describe_missing(self.missing_keys, self.shapes)


@dataclass
class Detection:
    """What the names and shapes of a file match. Pure data; no tensor was read."""

    keys: dict[str, Key]  # tensor name -> (name, shape as matched)
    found: dict[str, dict[str, list[str]]]  # architecture -> class -> components
    rejected: list[Rejection]
    resolved: str | None  # the architecture used
    components: dict[str, str] = field(default_factory=dict)  # class -> component used
    matched: dict[str, int] = field(default_factory=dict)  # subset component -> keys present

    @property
    def candidates(self) -> list[str]:
        return list(self.found)


def matched_key(
    name: str, shape: tuple[int, ...], free_shapes: Mapping[str, dict[int, tuple[int, ...]]]
) -> Key:
    """The key as the registry sees it: free dimensions (LoRA rank) become -1."""
    free = free_shapes.get(name, {}).get(len(shape))
    if free is not None:
        shape = tuple(-1 if spec == -1 else size for size, spec in zip(shape, free, strict=True))
    return name, shape


def describe_missing(missing: Iterable[Key], present: Mapping[str, tuple[int, ...]]) -> list[str]:
    lines = []
    for name, shape in sorted(missing):
        text = f"{name} [{','.join(map(str, shape))}]"
        if name in present:
            text += f" (found [{','.join(map(str, present[name]))}])"
        lines.append(text)
    return lines


def _aliased_names(spelled: Mapping[str, str], candidates: list[Component]) -> dict[str, str]:
    """File name -> the spelling a candidate's list has, for names no list has as they are
    but one has under an alias (ComfyUI's `norm.query_norm.weight` for BFL's `.scale`; the
    diffusers lists that say `.weight` themselves match as they are) or a name pattern
    (`<s1>` as `<token>`)."""
    if not spelled:
        return {}
    listed = {
        prefix + key
        for component in candidates
        for key, _ in component.keys
        for prefix in {"", component.prefix}
    }
    return {n: s for n, s in spelled.items() if n not in listed and s in listed}


def _respelled(names: Iterable[str], registry: Registry) -> dict[str, str]:
    """File name -> its spelling in the lists, for the names an alias or pattern applies to."""
    if not registry.renames:
        return {}
    spelled = {name: registry.canonical(name) for name in names}
    return {name: listed for name, listed in spelled.items() if listed != name}


def detect(shapes: Mapping[str, tuple[int, ...]], registry: Registry | None = None) -> Detection:
    """Identify a file from its tensor names and shapes."""
    registry = registry or load_registry()
    spelled = _respelled(shapes, registry)
    # Candidates by root, under both spellings: a pattern's name (`<token>`) is its own root.
    names = NameIndex([*shapes, *spelled.values()])
    candidates = [c for c in registry.components.values() if c.may_match(names)]
    free_shapes: dict[str, dict[int, tuple[int, ...]]] = {}
    for component in candidates:
        for name, by_rank in component.free_shapes.items():
            free_shapes.setdefault(name, {}).update(by_rank)
    listed_as = _aliased_names(spelled, candidates)
    keys = {
        name: matched_key(listed_as.get(name, name), tuple(shape), free_shapes)
        for name, shape in shapes.items()
    }
    keyset = set(keys.values())
    present = {name: key[1] for name, key in keys.items()}
    real = {name: tuple(shape) for name, shape in shapes.items()}  # what rejections show
    rejected: list[Rejection] = []

    forms: dict[str, set[bool]] = {}  # component -> the prefixings it was found in
    matched: dict[str, int] = {}  # subset component -> how many of its keys the file has
    for component in candidates:
        found_in: set[bool] = set()
        reasons: list[Rejection] = []
        if component.subset:
            for prefixed in (True, False):
                count = _match_subset(component.keyset(prefixed), present, real, reasons, component)
                if count:
                    found_in.add(prefixed)
                    matched[component.name] = max(matched.get(component.name, 0), count)
            if found_in:
                forms[component.name] = found_in
            else:
                rejected.extend(reasons)
            continue
        for prefixed in (True, False):
            required = component.keyset(prefixed, required_only=True)
            missing = required - keyset
            if not missing:
                found_in.add(prefixed)
            elif missing != required:
                reason = f"Missing required keys ({len(missing)} of {len(required)})"
                rejection = Rejection(component.name, reason, frozenset(missing), shapes=real)
                if rejection not in reasons:
                    reasons.append(rejection)
        if found_in:
            forms[component.name] = found_in
        else:
            rejected.extend(reasons)
    classes = registry.classes_of(set(forms))
    for members in classes.values():  # registry order, so that ties resolve the same way
        members.sort(key=list(registry.components).index)

    found: dict[str, dict[str, list[str]]] = {}
    for arch in registry.architectures.values():
        by_class = {
            cls: [
                c
                for c in classes.get(cls, [])
                if arch.prefixed in forms[c]
                and arch.allows(cls, c)
                # a partial checkpoint is a component that carries its checkpoint prefix
                and not (arch.partial and not registry.components[c].prefix)
            ]
            for cls in arch.all_classes
        }
        by_class = {cls: members for cls, members in by_class.items() if members}
        if all(cls in by_class for cls in arch.classes):
            if arch.prefer_superset:
                by_class = {
                    cls: [max(m, key=lambda c: len(registry.components[c].keys))]
                    for cls, m in by_class.items()
                }
            found[arch.name] = by_class
        elif any(cls in by_class for cls in arch.classes):
            missing_classes = sorted(set(arch.classes) - set(by_class))
            reason = "Missing required classes"
            rejected.append(Rejection(arch.name, reason, classes=tuple(missing_classes)))

    if any(name.startswith("SD-") for name in found):
        found = {n: c for n, c in found.items() if not registry.architectures[n].partial}
    found = {n: c for n, c in found.items() if registry.architectures[n].hidden_by not in found}

    resolved = resolve(found, registry, matched)
    components = (
        {
            cls: resolve_class(members, registry, matched)[0]
            for cls, members in found[resolved].items()
        }
        if resolved
        else {}
    )
    return Detection(keys, found, rejected, resolved, components, matched)


def _match_subset(
    keys: frozenset[Key],
    present: Mapping[str, tuple[int, ...]],
    real: Mapping[str, tuple[int, ...]],
    reasons: list[Rejection],
    component: Component,
) -> int:
    """How many of a subset component's keys the file has, all with the right shapes; 0 and a
    rejection when some have other shapes (a LoRA made for another base)."""
    spec = dict(keys)
    names = [name for name in spec if name in present]
    if not any(-1 in spec[name] for name in names):
        return 0  # only plain keys (a norm's scale) in common: a base model, not a LoRA
    wrong = {(name, spec[name]) for name in names if present[name] != spec[name]}
    if wrong:
        reason = f"Shapes disagree ({len(wrong)} of {len(names)})"
        rejection = Rejection(component.name, reason, frozenset(wrong), shapes=real)
        if rejection not in reasons:
            reasons.append(rejection)
        return 0
    return len(names)


def resolve_class(
    members: list[str], registry: Registry, matched: Mapping[str, int] | None = None
) -> list[str]:
    """Prefer the one `-SD` component, else the one with most keys (for LoRAs: most keys
    present in the file)."""
    if len(members) <= 1:
        return list(members)
    if matched and all(m in matched for m in members):
        return [max(members, key=lambda c: matched[c])]
    standard = [c for c in members if c.endswith("-SD")]
    if len(standard) == 1:
        return standard
    return [max(members, key=lambda c: len(registry.components[c].keys))]


def resolve(
    found: dict[str, dict[str, list[str]]],
    registry: Registry,
    matched: Mapping[str, int] | None = None,
) -> str | None:
    """The architecture to use: a preferred one if found, else the one with most keys."""
    if not found:
        return None
    for name in registry.preferred:
        if name in found:
            return name
    matched = matched or {}

    def size(name: str) -> int:
        total = 0
        for members in found[name].values():
            chosen = resolve_class(members, registry, matched)[0]
            total += matched.get(chosen, len(registry.components[chosen].keys))
        return total

    return max(found, key=size)


def allowed_keys(
    arch_name: str,
    by_class: Mapping[str, list[str]],
    registry: Registry | None = None,
    classes: set[str] | None = None,
) -> set[Key]:
    """Every key the architecture allows (its components' keys, prefixed as it wants them, plus
    its optional keys), or only the keys of some of its classes."""
    registry = registry or load_registry()
    arch = registry.architectures[arch_name]
    allowed: set[Key] = set() if classes is not None else set(arch.optional)
    for cls, members in by_class.items():
        if classes is not None and cls not in classes:
            continue
        for name in members:
            allowed |= registry.components[name].keyset(arch.prefixed)
    return allowed
