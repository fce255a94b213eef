"""What torch checkpoint formats share: turning an unpickled object into tensors and metadata."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import FormatError
from ..model import TensorRef
from .unpickler import TensorStub, to_plain

MAX_PICKLE_BYTES = 256 * 1024 * 1024  # data.pkl of the largest real checkpoints is a few MB
MAX_TENSORS = 200_000  # the largest real files have ~10k; two million names cost 1.1 GiB


def split_checkpoint(
    root: Any, resolve: Callable[[str, TensorStub], TensorRef], filename: str
) -> tuple[dict[str, TensorRef], dict[str, Any]]:
    """Tensors by dotted name, and the other top-level entries as plain metadata.

    A `state_dict` wrapper is unwrapped (its tensors keep their own names); tensors elsewhere
    (optimizer state, textual-inversion `string_to_param`) are reachable by dotted paths.
    """
    tensors: dict[str, TensorRef] = {}
    metadata: dict[str, Any] = {}

    def walk(value: Any, name: str) -> bool:
        """Collect tensors below `value`; True if there were any."""
        if isinstance(value, TensorStub):
            if name in tensors:
                raise FormatError(f"{filename}: two tensors are both named {name!r}")
            if len(tensors) >= MAX_TENSORS:
                raise FormatError(f"{filename} has over {MAX_TENSORS:,} tensors (the limit)")
            tensors[name] = resolve(name, value)
            return True
        if isinstance(value, dict):
            items = [(to_plain(k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        else:
            return False
        found = False
        for key, item in items:
            found |= walk(item, f"{name}.{key}" if name else str(key))
        return found

    if isinstance(root, TensorStub):
        walk(root, "tensor")
        return tensors, metadata
    if not isinstance(root, dict):
        walk(root, "")
        return tensors, metadata
    state_dict = root.get("state_dict")
    if isinstance(state_dict, dict):
        walk(state_dict, "")
    for key, value in root.items():
        if key == "state_dict" and isinstance(state_dict, dict):
            continue
        name = str(to_plain(key))
        if not walk(value, name):
            metadata[name] = to_plain(value)
    return tensors, metadata
