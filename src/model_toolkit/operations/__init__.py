"""Operations: each takes an opened model (or a Plan) and returns a Plan. Nothing is read here."""

from .convert import convert

__all__ = ["convert"]
