"""The one family of errors the library raises for bad input or bad requests.

The CLI turns any of these into a single `error: ...` line and exit status 2, so every message
must make sense on its own, name the file when there is one, and never need a traceback.
"""

from __future__ import annotations


class ModelToolkitError(Exception):
    """Base of every error caused by the input or the request, not by a bug."""


class FormatError(ModelToolkitError):
    """The file is not a model file we can read, or it is damaged."""


class UnsafeFileError(ModelToolkitError):
    """A pickle asks for something that is not on the allow-list; nothing was executed."""


class OutputExistsError(ModelToolkitError):
    """The output path exists and overwriting was not asked for."""


class UsageError(ModelToolkitError):
    """The request itself makes no sense (unknown precision, unknown extension, ...)."""


class MissingPartsError(UsageError):
    """A model to be built lacks classes its architecture needs (each front end says how to
    give them)."""


class UnknownLayoutError(UsageError):
    """A models folder whose layout (AUTOMATIC1111's or ComfyUI's) cannot be told from its
    folders (each front end says how to name it)."""
