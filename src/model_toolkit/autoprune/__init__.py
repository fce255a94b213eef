"""Autoprune: a model inbox that files everything into the right folder, crash-safely."""

from .job import Autopruner, Options, Outcome
from .layouts import KINDS, Layout, make_layout
from .watch import watch

__all__ = ["KINDS", "Autopruner", "Layout", "Options", "Outcome", "make_layout", "watch"]
