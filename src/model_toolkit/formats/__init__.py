"""One module per file format: read a header into TensorRefs, write a Plan."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..model import ModelFile
from ..storage import FileData
from . import gguf, safetensors, sniff

# Extensions that name a torch checkpoint when writing; reading looks at the bytes, not the name.
TORCH_EXTENSIONS = {".ckpt", ".pt", ".pth", ".bin"}


def _write_gguf(*args: Any, **kwargs: Any) -> None:
    """The GGUF writer, imported when used: it needs numpy and the plans (identifying a file
    imports neither)."""
    from . import gguf_writer

    gguf_writer.write(*args, **kwargs)


def _write_torch(*args: Any, **kwargs: Any) -> None:
    """The torch checkpoint writer, imported when used (with the pickle machinery)."""
    from . import torch_zip

    torch_zip.write(*args, **kwargs)


WRITERS = {
    ".safetensors": safetensors.write,
    ".gguf": _write_gguf,
    **dict.fromkeys(TORCH_EXTENSIONS, _write_torch),
}


def open_model(path: str | os.PathLike[str]) -> ModelFile:
    """Open a model file, reading only its header. The format is told from the bytes.

    Raises FormatError (or UnsafeFileError for a pickle that asks for anything off the
    allow-list) with a one-line message naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise FormatError(f"{path} is a directory, not a model file")
    data = FileData(path)
    try:
        if data.size == 0:
            raise FormatError(f"{path.name} is empty")
        prefix = data.pread(min(data.size, 512), 0)
        kinds = sniff.formats_of(prefix, data.size)
        if gguf.looks_like(prefix):
            # Its magic is also a pickle opcode: only a whole pickle, or a zip (torch.load
            # would unpickle its data.pkl), makes it a second format.
            other = [
                k for k in kinds if k != sniff.PICKLE or sniff.scan_pickles(k, data, path.name)
            ]
            if other:
                sniff.refuse_polyglot([sniff.GGUF, *other], data, path.name)
            return gguf.read(path, data)
        if len(kinds) > 1:
            sniff.refuse_polyglot(kinds, data, path.name)
        kind = kinds[0] if kinds else None
        if kind == sniff.SAFETENSORS:
            return safetensors.read(path, data)
        if kind == sniff.ZIP:
            from . import torch_zip  # the pickle machinery, for pickles only

            return torch_zip.read(path, data)  # it walks every pickle member, data.pkl once
        if kind == sniff.PICKLE:
            from . import torch_legacy  # the pickle machinery, for pickles only

            if torch_legacy.looks_like(prefix):
                return torch_legacy.read(path, data)
            # torch.load would unpickle it (its first pickle is the legacy magic number): name
            # what it calls, else say what it is.
            if sniff.scan_pickles(kind, data, path.name):
                raise FormatError(
                    f"{path.name} is a pickle, not a safetensors or torch checkpoint file"
                )
            if safetensors.looks_like(prefix):
                return safetensors.read(path, data)  # for its precise error message
        if kind == sniff.TAR or prefix[257:262] == b"ustar":
            sniff.scan_pickles(sniff.TAR, data, path.name)
            raise FormatError(
                f"{path.name} uses torch's oldest (tar) format, which is not supported"
            )
        if path.suffix.lower() == ".safetensors":
            return safetensors.read(path, data)  # for its precise error message
        raise FormatError(f"{path.name} is not a safetensors, GGUF or torch checkpoint file")
    except BaseException:
        data.close()
        raise
