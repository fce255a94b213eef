"""What the `mtk` command prints, and its one-line errors: shared by the full command line
(cli.py, typer) and the quick path (entry.py) that runs `mtk inspect` without it."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from .errors import ModelToolkitError, OutputExistsError, UnknownLayoutError
from .text import printable, terminal_safe


def echo(text: str, err: bool = False, nl: bool = True) -> None:
    """Print to the terminal with every control character a file could carry escaped: tensor
    names, storage keys and metadata are the file author's text (escape sequences can clear
    the screen or set the clipboard). Our own newlines and tabs are kept. Flushed at once, so
    that lines keep their order whoever else writes to the stream."""
    stream = sys.stderr if err else sys.stdout
    stream.write(terminal_safe(text) + ("\n" if nl else ""))
    stream.flush()


def error_line(text: str) -> None:
    """An error is one line, whatever newlines the file put into the names it quotes."""
    echo(f"error: {printable(text)}", err=True)


def human(size: int) -> str:
    """Binary units, as `ls -h` counts them (reports use the original toolkit's own wording)."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


def guarded(command: Callable[[], object]) -> None:
    """Run a command: library errors become one `error: ...` line and exit status 2.

    Everything raised by the library for bad input is a ModelToolkitError and ends here,
    never as a traceback; the command line's own flags are named where one would help.
    """
    # numpy's OpenBLAS starts a thread per core at import, and they spin before they sleep:
    # on 2 cores that takes one from the metric's workers (~10% of its pass). Matrix work
    # (lora apply's products, extract's SVDs) runs one layer per worker thread instead; a
    # user's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        command()
    except OutputExistsError as exc:  # the library says what is wrong, we say what to do
        error_line(f"{exc}; use --overwrite to replace it")
        sys.exit(2)
    except UnknownLayoutError as exc:
        error_line(f"{exc}; use --layout")
        sys.exit(2)
    except ModelToolkitError as exc:
        error_line(str(exc))
        sys.exit(2)
    except OSError as exc:
        error_line(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        sys.exit(2)
    except Exception as exc:  # a bug, not bad input: still one line unless asked for details
        if os.environ.get("MTK_DEBUG"):
            raise
        error_line(
            f"internal error ({exc.__class__.__name__}: {exc}); set MTK_DEBUG=1 to see where"
        )
        sys.exit(1)
