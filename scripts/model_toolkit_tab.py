"""AUTOMATIC1111/Forge entry point: the webui loads every scripts/*.py of an extension.

The extension folder is this repository, so the package is imported from its src/ folder.
"""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent.parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from model_toolkit.ui.extension import register  # noqa: E402

register()
