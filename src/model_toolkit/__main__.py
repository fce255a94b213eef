"""`python -m model_toolkit` runs the `mtk` command."""

from .cli import main

main()
