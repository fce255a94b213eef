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
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, shape = line.rpartition(" ")
        if not name or not (shape.startswith("[") and shape.endswith("]")):
            raise ValueError(f"line {number}: expected 'name [d0,d1,...]', got {line!r}")
        dims = shape[1:-1]
        entries.append((name, tuple(int(d) for d in dims.split(",")) if dims else ()))
    return entries


def load(name: str) -> KeyList:
    """A component list shipped with the package, by file stem (e.g. `UNET-v1-SD`)."""
    return parse((DATA / f"{name}.txt").read_text(encoding="utf-8"))


# The first dotted segment of each key name: no comment, no space, no dot in it.
_ROOT = re.compile(r"^[ \t]*([^#.\s][^.\s]*)", re.MULTILINE)


def roots(name: str) -> frozenset[str]:
    """The first segments of a shipped list's key names, found without parsing the list."""
    return frozenset(_ROOT.findall((DATA / f"{name}.txt").read_text(encoding="utf-8")))


def load_path(path: Path) -> KeyList:
    return parse(path.read_text(encoding="utf-8"))
