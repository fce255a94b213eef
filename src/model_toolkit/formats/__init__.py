"""One module per file format: read a header into TensorRefs, write a Plan."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FormatError
from ..model import FileData, ModelFile
from . import safetensors, torch_legacy, torch_zip

# Extensions that name a torch checkpoint when writing; reading looks at the bytes, not the name.
TORCH_EXTENSIONS = {".ckpt", ".pt", ".pth", ".bin"}
WRITERS = {".safetensors": safetensors.write, **dict.fromkeys(TORCH_EXTENSIONS, torch_zip.write)}


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
        if safetensors.looks_like(prefix):
            return safetensors.read(path, data)
        if torch_zip.looks_like(prefix):
            return torch_zip.read(path, data)
        if torch_legacy.looks_like(prefix):
            return torch_legacy.read(path, data)
        if torch_legacy.looks_like_tar(prefix):
            raise FormatError(
                f"{path.name} uses torch's oldest (tar) format, which is not supported"
            )
        if path.suffix.lower() == ".safetensors":
            return safetensors.read(path, data)  # for its precise error message
        raise FormatError(f"{path.name} is not a safetensors or torch checkpoint file")
    except BaseException:
        data.close()
        raise
