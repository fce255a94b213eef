"""Reading key+shape lists: one tensor a line, `name [d0,d1,...]`, `-1` for a free dimension."""

from __future__ import annotations

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
    """A component list shipped with the package, by file stem (e.g. `UNET-v1-SD`)."""
    return parse((DATA / f"{name}.txt").read_text(encoding="utf-8"))


def roots(name: str) -> frozenset[str]:
    """The first segments of a shipped list's key names, found without parsing the list (a
    set of the lines' first pieces, tidied: twice as fast as a regular expression)."""
    text = (DATA / f"{name}.txt").read_text(encoding="utf-8")
    pieces = {line.split(".", 1)[0] for line in text.split("\n")}
    found = {piece.strip().partition(" ")[0] for piece in pieces}  # "betas [1000]": no dot
    return frozenset(root for root in found if root and not root.startswith("#"))


def load_path(path: Path) -> KeyList:
    return parse(path.read_text(encoding="utf-8"))
