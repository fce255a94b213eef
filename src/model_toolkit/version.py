"""The one place the version is written (pyproject.toml reads it from here).

A literal, because looking it up through importlib.metadata costs 50 ms on every `mtk` start.
"""

__version__ = "0.1.0"
