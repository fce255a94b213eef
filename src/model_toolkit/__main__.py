"""`python -m model_toolkit` runs the `mtk` command."""

from .entry import main

if __name__ == "__main__":  # not when a worker process imports the main module again
    main()
