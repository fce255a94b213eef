"""File-borne text made safe to print: a tensor name or metadata value may carry terminal escape
sequences (clear the screen, set the clipboard by OSC 52) or a newline that forges a second
`error:` line. Everything that prints a string read from a file passes it through here."""

from __future__ import annotations

import unicodedata

_KEPT_IN_BLOCKS = {"\n", "\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _is_control(char: str) -> bool:
    # Cc: C0/C1 controls and DEL; Cf: format characters (bidi overrides, zero-width ones).
    return unicodedata.category(char) in ("Cc", "Cf")


def printable(text: str, limit: int | None = None) -> str:
    """One line: every control or format character escaped (`\\x1b`, `\\n`, `\\u202e`)."""
    if not text.isprintable():
        text = "".join(_escape(c) if _is_control(c) else c for c in text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return text


def terminal_safe(text: str) -> str:
    """A block of lines: controls escaped, but its own newlines and tabs kept."""
    if text.isprintable():
        return text
    return "".join(_escape(c) if _is_control(c) and c not in _KEPT_IN_BLOCKS else c for c in text)
