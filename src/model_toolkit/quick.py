"""`mtk inspect` and `mtk keys`, as plain functions: the commands people run in loops over
folders and in scripts. cli.py declares their arguments for typer; entry.py runs them without
typer when the arguments are the usual ones, as importing the CLI framework takes longer than
identifying a file (issue #22)."""

from __future__ import annotations

import json
from pathlib import Path

from .console import echo, human
from .dtypes import precision_dtype
from .formats import open_model
from .text import printable
from .version import __version__


def version() -> None:
    """`mtk --version`."""
    echo(f"mtk {__version__}")


def inspect(
    file: Path,
    as_json: bool = False,
    advanced: bool = False,
    no_metric: bool = False,
    fix_clip: bool = False,
    precision: str = "auto",
) -> None:
    """Identify a model and report what is in it, as the original toolkit's reports."""
    from .analysis import analyze
    from .findings import gather_findings
    from .report import advanced_report, basic_report
    from .report import as_json as json_report

    dtype = precision_dtype(precision)
    if file.is_dir():
        _inspect_folder(file, as_json)
        return
    with open_model(file) as model:
        analysis = analyze(model, dtype)
        findings = gather_findings(analysis, model.metadata, read_data=not no_metric)
        if as_json:
            echo(json.dumps(json_report(analysis, findings), indent=2))
        elif advanced:
            echo(advanced_report(analysis, findings), nl=False)
        else:
            echo(basic_report(analysis, findings, fix_clip), nl=False)


def _inspect_folder(folder: Path, as_json: bool) -> None:
    """A diffusers folder: each component subfolder identified from its headers."""
    from .analysis import analyze_folder

    rows = analyze_folder(folder)
    if as_json:
        echo(json.dumps({"path": str(folder), "format": "diffusers", "parts": rows}, indent=2))
        return
    echo(f"{folder} (diffusers folder)")
    for row in rows:
        what = row["architecture"] or "not identified"
        parts = ", ".join(row["components"].values())
        detail = f" ({parts})" if parts else ""
        echo(f"  {row['folder']}/: {what}{detail}, {human(row['bytes'])} {'/'.join(row['dtypes'])}")


def keys(file: Path, as_json: bool = False) -> None:
    """List every tensor with its dtype and shape, then the file's metadata."""
    with open_model(file) as model:
        rows = [(name, ref.dtype.name, list(ref.shape)) for name, ref in model.tensors.items()]
        if as_json:
            echo(json.dumps([{"name": n, "dtype": d, "shape": s} for n, d, s in rows]))
            return
        rows = [(printable(name), dtype, shape) for name, dtype, shape in rows]
        width = max((len(name) for name, _, _ in rows), default=0)
        lines = [
            f"{name:<{width}}  {dtype:<11} [{','.join(map(str, shape))}]"
            for name, dtype, shape in rows
        ]
        lines.append(f"{len(rows)} tensors, {human(model.nbytes)}, format {model.format}")
        if model.metadata:
            lines.append("metadata:")
            for key, value in model.metadata.items():
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                lines.append(f"  {printable(key)}: {printable(text)}")
        echo("\n".join(lines))
