"""The `mtk` entry point: the commands people run in loops, without the CLI framework.

Importing typer and click takes 50-150 ms, longer than identifying a checkpoint from its
header, and `mtk inspect` runs over whole folders in users' scripts. So `mtk inspect`,
`mtk keys` and `mtk --version` with the arguments they usually have go straight to their
functions (quick.py); anything else (--help, a typo, an option given twice, every other
command) goes to the full command line (cli.py), which says what typer says. Both run the
same functions, so the output is the same either way (tested).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

# command -> (its flags, its options that take a value), each -> the function's parameter;
# what cli.py declares for typer, in the spellings the quick path takes.
_FORMS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "inspect": (
        {
            "--json": "as_json",
            "--advanced": "advanced",
            "--no-metric": "no_metric",
            "--fix-clip": "fix_clip",
        },
        {"--precision": "precision"},
    ),
    "keys": ({"--json": "as_json"}, {}),
}


def quick_command(args: list[str]) -> Callable[[], None] | None:
    """The command these arguments run, if they are a form the quick path knows (one file
    and known options, each once); None sends them to the full command line."""
    if args == ["--version"]:
        from . import quick

        return quick.version
    if not args or args[0] not in _FORMS:
        return None
    name, rest = args[0], args[1:]
    flags, options = _FORMS[name]
    chosen: dict[str, object] = {}
    files: list[str] = []
    position = 0
    while position < len(rest):
        arg = rest[position]
        option, equals, value = arg.partition("=")
        if arg in flags and flags[arg] not in chosen:
            chosen[flags[arg]] = True
        elif option in options and options[option] not in chosen:
            if not equals:
                position += 1
                if position == len(rest):
                    return None  # typer says the value is missing
                value = rest[position]
            chosen[options[option]] = value
        elif arg.startswith("-") or files:
            return None  # --help, an unknown option, a second file: typer's words for it
        else:
            files.append(arg)
        position += 1
    if not files:
        return None
    from . import quick

    function = quick.inspect if name == "inspect" else quick.keys
    return lambda: function(Path(files[0]), **chosen)  # type: ignore[arg-type]


def main() -> None:
    """`mtk`: the quick path where it applies, else the full command line."""
    command = quick_command(sys.argv[1:])
    if command is None:
        from .cli import main as full_command_line

        full_command_line()
        return
    from .console import guarded

    guarded(command)
