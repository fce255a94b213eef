"""Locating a component in a file's detection: which class, which member, under which names.

What extract, replace, build, diff, the library scan and the web UI share. Names and shapes
only (no numpy, no tensor read): operations turn the located names into plan entries.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .detect import Detection, resolve_class
from .registry import Component, Key, load_registry

POSITION_IDS = "embeddings.position_ids"  # CLIP's key, under its text model's prefix


def check_class(cls: str) -> None:
    registry = load_registry()
    classes = sorted({c.cls for c in registry.components.values()})
    if cls not in classes:
        raise UsageError(f"unknown class {cls!r}; classes are: {', '.join(classes)}")


@dataclass(frozen=True)
class Found:
    """A component located in a source: where its keys are and what they will be called."""

    component: Component
    prefixed: bool  # its keys carry the component's prefix in the source
    # Standing in for another class's component (registry `serving`): (that component, the
    # key prefix to remove). A CLIP-L file imported as SD-v1's CLIP.
    serving: tuple[str, str] | None = None

    @property
    def output_component(self) -> Component:
        """An EMA copy comes out as the component it copies (keys with dots); a stand-in as
        the component it stands in for."""
        registry = load_registry()
        if self.serving:
            return registry.components[self.serving[0]]
        return registry.components[self.component.ema_of or self.component.name]


def find_component(detection: Detection, cls: str, component: str | None, name: str) -> Found:
    """The component of class `cls` in a source: the named one, or the best one found.

    `cls` may be the class of an EMA copy's original (UNET-v1 finds UNET-v1-EMA only when named).
    """
    check_class(cls)
    registry = load_registry()
    order = [detection.resolved] if detection.resolved else []
    order += [a for a in detection.found if a not in order]
    for arch in order:
        prefixed = registry.architectures[arch].prefixed
        for found_cls, members in detection.found[arch].items():
            if component is not None:
                if component not in members:
                    continue
                spec = registry.components[component]
                original = registry.components[spec.ema_of] if spec.ema_of else spec
                if cls not in (spec.cls, original.cls):
                    raise UsageError(f"{component} is a {spec.cls}, not a {cls}")
                return Found(spec, prefixed)
            if found_cls == cls:
                chosen = resolve_class(members, registry)[0]
                return Found(registry.components[chosen], prefixed)
    if component is None:  # a file of another class that can stand in for this one
        for arch in order:
            for members in detection.found[arch].values():
                for member in members:
                    if cls in registry.serving.get(member, {}):
                        prefixed = registry.architectures[arch].prefixed
                        serving = registry.serving[member][cls]
                        return Found(registry.components[member], prefixed, serving)
    wanted = component or cls
    raise UsageError(f"{name} does not contain a {wanted}")


def component_names(found: Found, detection: Detection) -> tuple[list[tuple[str, str]], list[Key]]:
    """Where a found component's tensors are: (key without prefix, tensor name) for each, in
    the file's order, and the keys its output class has that a stand-in's naming leaves out
    (CLIP position ids, which the caller makes).

    An EMA copy's keys get their dots back (`input_blocks00weight` -> `input_blocks.0.0.weight`).
    """
    component = found.component
    prefix = component.prefix if found.prefixed else ""
    wanted = {prefix + key: (key, shape) for key, shape in component.keys}
    dotted = {}
    if component.ema_of:
        dotted = {k.replace(".", ""): k for k, _ in found.output_component.keys}
    strip = found.serving[1] if found.serving else ""
    located = []
    for name, (listed, shape) in detection.keys.items():
        spec = wanted.get(listed)
        if spec is not None and shape == spec[1]:
            # An alias keeps the file's own spelling (ComfyUI's `.weight` for `.scale`).
            key = spec[0] if listed == name else name[len(prefix) :]
            if strip and key.startswith(strip):
                key = key[len(strip) :]
            located.append((dotted.get(key, key), name))
    missing: list[Key] = []
    if found.serving:
        names = {key for key, _ in located}
        missing = [
            (key, shape)
            for key, shape in found.output_component.keys
            if key == POSITION_IDS and key not in names
        ]
    return located, missing
