"""Reading key+shape lists: one tensor a line, `name [d0,d1,...]`, `-1` for a free dimension."""

from __future__ import annotations

import re
from pathlib import Path

# The package's own folder, not importlib.resources: that import alone costs ~20 ms of start-up,
# and the data is always installed as plain files next to this module.
DATA = Path(__file__).parent / "data"

KeyList = list[tuple[str, tuple[int, ...]]]


def parse(text: str) -> KeyList:
    """Parse a key list; blank lines and `#` comments are ignored."""
    entries: KeyList = []
    shapes: dict[str, tuple[int, ...]] = {}  # most shapes repeat: each is parsed once
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, shape = line.rpartition(" ")
        dims = shapes.get(shape)
        if dims is None and shape.startswith("[") and shape.endswith("]"):
            inner = shape[1:-1]
            dims = shapes[shape] = tuple(int(d) for d in inner.split(",")) if inner else ()
        if not name or dims is None:
            raise ValueError(f"line {number}: expected 'name [d0,d1,...]', got {line!r}")
        entries.append((name, dims))
    return entries


def load(name: str) -> KeyList:
    """A component list shipped with the package, by file stem (e.g. `UNET-v1-SD`), parsed
    once per version of the list (keycache)."""
    from .keycache import cached

    path = DATA / f"{name}.txt"
    return cached(name, (path,), lambda: parse(path.read_text(encoding="utf-8")))


ROOTS_INDEX = DATA / "roots.json"


# First segments that wrap unrelated models, so that a root must say what is inside: every
# Hugging Face language model's keys start `model.` (`model.layers`), as every LDM
# checkpoint's do (`model.diffusion_model`).
WRAPPERS = frozenset({"model"})


def root_of(name: str) -> str:
    """What a file must share with a list for the list to be worth parsing: a key name's first
    dotted segment (`double_blocks`), or its first two under a wrapper (`model.layers`), up to
    its first digit: names that flatten a path into one segment (kohya's
    `lora_unet_input_blocks_1_0_proj_in`, an EMA's `input_blocks00bias`) share the root of
    their kind of layer, not one each, so the index stays small and loads in no time."""
    first, _, rest = name.partition(".")
    if first in WRAPPERS and rest:
        return f"{first}.{rest.partition('.')[0]}"
    return _before_digit(first)


def _before_digit(segment: str) -> str:
    return _NON_DIGITS.match(segment).group() or segment  # type: ignore[union-attr]


_NON_DIGITS = re.compile(r"\D*")


def roots(name: str) -> frozenset[str]:
    """The roots of a shipped list's key names: from the index built with the lists
    (roots.json), else read from the list itself."""
    index = _roots_index()
    if name in index:
        return index[name]
    return list_roots(name)


def derived_index_name(spec: dict, raw: dict) -> str:
    """The index entry of a derived component's roots: they depend only on its base list and
    its format's layer naming (and layer choice), so a LoRA, LoHa and LoKr of one base share
    one entry."""
    base, form = spec["derive"]
    naming = raw["lora_formats"][form]
    layers = "".join(f"|{naming[k]}" for k in ("select", "strip") if k in naming)
    return f"derived/{raw['components'][base]['keys']}/{naming['module']}{layers}"


def derived_roots(spec: dict, raw: dict) -> frozenset[str]:
    """The roots of a derived component (registry `derive`): from the index, else made from
    its base list by its format's rule."""
    found = _roots_index().get(derived_index_name(spec, raw))
    return found if found is not None else _make_derived_roots(spec, raw)


def _make_derived_roots(spec: dict, raw: dict) -> frozenset[str]:
    from .derive import lora_keys  # derive imports this module

    base, form = spec["derive"]
    keys = lora_keys(load(raw["components"][base]["keys"]), raw["lora_formats"][form])
    return frozenset(root_of(key) for key, _ in keys)


def list_roots(name: str) -> frozenset[str]:
    """The roots of a list, from its text (one pass over its lines, no shapes parsed)."""
    text = (DATA / f"{name}.txt").read_text(encoding="utf-8")
    return frozenset(
        root_of(line.partition(" ")[0])
        for line in map(str.strip, text.split("\n"))
        if line and not line.startswith("#")
    )


_INDEX: dict[str, frozenset[str]] | None = None


def _roots_index() -> dict[str, frozenset[str]]:
    """roots.json: every shipped list's roots, so that start-up reads one file instead of
    every list. Kept true by tests/test_identify.py, rebuilt with
    `python -m model_toolkit.architectures.keylists`."""
    global _INDEX
    if _INDEX is None:
        import json

        try:
            raw = json.loads(ROOTS_INDEX.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
        _INDEX = {name: frozenset(found) for name, found in raw.items()}
    return _INDEX


def write_roots_index() -> None:
    """roots.json from the lists, and from the registry's derived components."""
    import json

    index = {path.stem: sorted(list_roots(path.stem)) for path in sorted(DATA.glob("*.txt"))}
    raw = json.loads((DATA / "registry.json").read_text(encoding="utf-8"))
    for spec in raw["components"].values():
        if "derive" in spec:
            index[derived_index_name(spec, raw)] = sorted(_make_derived_roots(spec, raw))
    ROOTS_INDEX.write_text(json.dumps(index, separators=(",", ":")) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_roots_index()


def load_path(path: Path) -> KeyList:
    return parse(path.read_text(encoding="utf-8"))
