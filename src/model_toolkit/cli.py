"""The `mtk` command: arguments, presentation, and the CLI's words for the library's errors
(its flags); the work is done by the library.

No `from __future__ import annotations` here: typer would evaluate every option's annotation
string at each start (200+ compile() calls, ~30 ms).
"""

import json
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import quick
from .console import echo, guarded, human
from .dtypes import PRECISIONS, precision_dtype
from .errors import (
    MissingPartsError,
    ModelToolkitError,
)
from .filenames import free_name, output_stem, output_suffix, stem_of
from .formats import open_model
from .text import printable

if TYPE_CHECKING:
    from .autoprune import Outcome
    from .plan import Plan
    from .write import ProgressCallback

# Commands import what they use when they run: `mtk inspect` starts in a fraction of the time
# without the writers and numpy.

app = typer.Typer(
    help="Model Toolkit: inspect, prune, convert and repair Stable Diffusion-family model files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PROGRESS_MIN_BYTES = 256 * 1024 * 1024  # smaller writes finish before a bar would help


def _version(value: bool) -> None:
    if value:
        quick.version()
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Model Toolkit."""


@contextmanager
def _progress(total: int, label: str) -> Iterator["ProgressCallback | None"]:
    """A progress bar on stderr for writes that take more than a moment, on a terminal only."""
    if total < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        yield None
        return
    # Imported here: rich.progress costs 45 ms at start-up, and most commands never draw a bar.
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done, _total: bar.update(task, completed=done)


@app.command()
def keys(
    file: Annotated[
        Path, typer.Argument(help="Model file (.safetensors, .ckpt, .pt, .pth, .bin).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead.")] = False,
) -> None:
    """List every tensor with its dtype and shape, then the file's metadata."""
    quick.keys(file, as_json)


@app.command()
def inspect(
    file: Annotated[
        Path,
        typer.Argument(
            help="Model file (.safetensors, .ckpt, .pt, .pth, .bin) or diffusers folder."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    advanced: Annotated[
        bool,
        typer.Option(
            "--advanced", help="Statistics, every architecture found, rejections, unknown keys."
        ),
    ] = False,
    no_metric: Annotated[
        bool,
        typer.Option(
            "--no-metric", help="Read no tensor data: names and shapes only (milliseconds)."
        ),
    ] = False,
    fix_clip: Annotated[
        bool,
        typer.Option("--fix-clip", help="Report as if broken CLIP position ids will be fixed."),
    ] = False,
    precision: Annotated[
        str, typer.Option(help="The precision pruning would use, for the size estimate.")
    ] = "auto",
) -> None:
    """Identify a model and report what is in it, as the original toolkit's reports."""
    quick.inspect(file, as_json, advanced, no_metric, fix_clip, precision)


def _write(
    plan: "Plan",
    output: Path,
    inputs: list[Path],
    overwrite: bool,
    as_json: bool,
    input_bytes: int,
    report_saving: bool = True,
    modelspec: bool = False,
) -> None:
    """Write a plan and say what was written: one line, or a JSON summary."""
    from .metadata import with_modelspec
    from .write import write_plan

    if not overwrite and any(output.resolve() == p.resolve() for p in inputs):
        raise ModelToolkitError(f"{output} is an input; use --overwrite to replace it")
    if output.suffix.lower() == ".gguf":  # the diffusion model alone, typed as GGUF stores it
        from .formats.gguf_writer import for_gguf

        plan = for_gguf(plan)
    for warning in plan.warnings:
        echo(f"warning: {printable(warning)}", err=True)
    if not plan.entries:
        raise ModelToolkitError("nothing to write: the result has no tensors")
    extra: dict[str, Any] = {}
    if modelspec:
        if output.suffix.lower() != ".safetensors":
            raise ModelToolkitError("--modelspec needs a .safetensors output")
        plan, extra = with_modelspec(plan, stem_of(output.name))
    with _progress(plan.nbytes, f"writing {output.name}") as progress:
        write_plan(plan, output, overwrite=overwrite, progress=progress, **extra)
    size = output.stat().st_size
    if as_json:
        echo(
            json.dumps(
                {
                    "output": str(output),
                    "tensors": len(plan.entries),
                    "bytes": size,
                    "input_bytes": input_bytes,
                    "saved": input_bytes - size,
                    "warnings": plan.warnings,
                }
            )
        )
    else:
        saved = input_bytes - size
        detail = f", saved {human(saved)}" if report_saving and saved > 0 else ""
        echo(f"wrote {output} ({human(size)}{detail})")


ModelSpecOption = Annotated[
    bool,
    typer.Option(
        "--modelspec", help="Write ModelSpec fields (architecture, title, date, hash_sha256)."
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("-o", "--output", help="The file to write; its extension picks the format."),
]
PrecisionOption = Annotated[str, typer.Option(help=f"Cast floats: {', '.join(PRECISIONS)}.")]
OverwriteOption = Annotated[bool, typer.Option(help="Replace the output if it exists.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON summary.")]
ComponentOption = Annotated[
    str | None,
    typer.Option(help="A specific component of the source (default: the best one)."),
]
FixClipOption = Annotated[
    bool, typer.Option("--fix-clip", help="Rewrite CLIP position ids to 0..76.")
]


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="The model file to read.")],
    output: Annotated[
        Path,
        typer.Argument(
            help="The file to write; its extension picks the format (.safetensors, .ckpt, .pt)."
        ),
    ],
    precision: PrecisionOption = "keep",
    modelspec: ModelSpecOption = False,
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
) -> None:
    """Change format and/or precision, keeping every tensor and the metadata."""
    from . import operations

    dtype = precision_dtype(precision)
    with open_model(source) as model:
        plan = operations.convert(model, dtype)
        size = source.stat().st_size
        _write(plan, output, [source], overwrite, as_json, size, modelspec=modelspec)


@app.command()
def prune(
    source: Annotated[Path, typer.Argument(help="The model file to prune.")],
    output: OutputOption = None,
    precision: PrecisionOption = "auto",
    keep_ema: Annotated[bool, typer.Option(help="Keep the EMA weights.")] = False,
    fix_clip: FixClipOption = False,
    drop: Annotated[
        list[str] | None,
        typer.Option(help="An optional class to remove (T5-XXL of a Flux or SD3 file)."),
    ] = None,
    modelspec: ModelSpecOption = False,
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
) -> None:
    """Keep what the model's architecture needs: drop junk and EMA, cast to fp16, fix names."""
    from . import operations

    dtype = precision_dtype(precision)
    with open_model(source) as model:
        plan = operations.prune(model, dtype, keep_ema, fix_clip, tuple(drop or ()))
        target = output or free_name(
            source.parent, output_stem("prune", stem_of(source.name)), output_suffix(source)
        )
        size = source.stat().st_size
        _write(plan, target, [source], overwrite, as_json, size, modelspec=modelspec)


@app.command()
def extract(
    source: Annotated[Path, typer.Argument(help="The model file to take the component from.")],
    cls: Annotated[str, typer.Argument(metavar="CLASS", help="UNET-v1, VAE-v1, CLIP-v1, ...")],
    output: OutputOption = None,
    component: ComponentOption = None,
    precision: PrecisionOption = "keep",
    fix_clip: FixClipOption = False,
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
) -> None:
    """Save one component as a standalone file, its prefix removed."""
    from . import operations

    dtype = precision_dtype(precision)
    with open_model(source) as model:
        plan = operations.extract(model, cls, component, dtype, fix_clip)
        target = output or free_name(
            source.parent,
            output_stem("extract", stem_of(source.name), cls),
            output_suffix(source),
        )
        _write(plan, target, [source], overwrite, as_json, source.stat().st_size, False)


@app.command()
def replace(
    target: Annotated[Path, typer.Argument(help="The model whose component is replaced.")],
    cls: Annotated[str, typer.Option("--class", metavar="CLASS", help="The class to replace.")],
    source: Annotated[
        Path, typer.Option("--from", help="A component file, or any model containing the class.")
    ],
    component: ComponentOption = None,
    output: OutputOption = None,
    precision: PrecisionOption = "keep",
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
) -> None:
    """Replace a class of a model (its VAE, CLIP, UNET) with the one from another file."""
    from . import operations

    dtype = precision_dtype(precision)
    with open_model(target) as model, open_model(source) as donor:
        plan = operations.replace(model, cls, donor, component, dtype)
        stem = output_stem("replace", stem_of(target.name), cls)
        name = free_name(target.parent, stem, ".safetensors")
        _write(
            plan, output or name, [target, source], overwrite, as_json, target.stat().st_size, False
        )


@app.command()
def merge(
    models: Annotated[
        list[Path], typer.Argument(metavar="A B [C]", help="The models: A, B (and C).")
    ],
    mode: Annotated[
        str,
        typer.Option(
            help="weighted-sum (A*(1-alpha) + B*alpha), add-difference "
            "(A + (B-C)*alpha), no-interpolation (A alone)."
        ),
    ] = "weighted-sum",
    alpha: Annotated[
        list[str] | None,
        typer.Option(help="The multiplier (default 0.5), or CLASS=VALUE for one class."),
    ] = None,
    output: OutputOption = None,
    precision: PrecisionOption = "keep",
    hashes: Annotated[
        bool, typer.Option(help="Hash the inputs (SHA-256) for the recipe: one more read each.")
    ] = False,
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
) -> None:
    """Merge checkpoints as AUTOMATIC1111's merger does, streamed."""
    from . import operations

    dtype = precision_dtype(precision)
    multiplier, per_class = 0.5, {}
    for item in alpha or []:
        cls, sep, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise ModelToolkitError(f"--alpha {item!r}: write a number, or CLASS=NUMBER") from None
        if sep:
            per_class[cls] = number
        else:
            multiplier = number
    known: dict[str, str | None] = {}
    if hashes:
        from .hashes import compute_hashes

        known = {str(p): compute_hashes(p, ("sha256",)).values["sha256"] for p in models}
    with ExitStack() as stack:
        opened = [stack.enter_context(open_model(path)) for path in models]
        plan = operations.merge(
            *opened, mode=mode, alpha=multiplier, alphas=per_class, precision=dtype, hashes=known
        )
        stem = output_stem("merge", stem_of(models[0].name))
        target = output or free_name(models[0].parent, stem, ".safetensors")
        _write(plan, target, models, overwrite, as_json, models[0].stat().st_size, False)


lora_app = typer.Typer(
    help="Apply LoRAs to a model; extract, resize and convert them.", no_args_is_help=True
)
app.add_typer(lora_app, name="lora")


def _lora_and_strength(text: str) -> tuple[Path, float]:
    """LORA[:WEIGHT]; a path whose last colon is not followed by a number is a path."""
    path, sep, weight = text.rpartition(":")
    if sep:
        try:
            return Path(path), float(weight)
        except ValueError:
            pass
    return Path(text), 1.0


@lora_app.command("apply")
def lora_apply(
    model: Annotated[Path, typer.Argument(help="The model the LoRAs are merged into.")],
    loras: Annotated[
        list[str],
        typer.Argument(
            metavar="LORA[:WEIGHT]...", help="LoRA files, each with its strength (default 1)."
        ),
    ],
    output: OutputOption = None,
    precision: PrecisionOption = "keep",
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
) -> None:
    """Merge LoRA, LoCon, LoHa, LoKr and DoRA files into a model, streamed."""
    from . import operations

    dtype = precision_dtype(precision)
    given = [_lora_and_strength(item) for item in loras]
    with ExitStack() as stack:
        opened = stack.enter_context(open_model(model))
        pairs = [(stack.enter_context(open_model(path)), weight) for path, weight in given]
        plan = operations.lora_apply(opened, pairs, precision=dtype)
        stem = output_stem("lora", stem_of(model.name))
        target = output or free_name(model.parent, stem, ".safetensors")
        inputs = [model, *(path for path, _ in given)]
        _write(plan, target, inputs, overwrite, as_json, model.stat().st_size, False)


def _dynamic(option: list[str] | None) -> tuple[str, float] | None:
    """--dynamic METHOD VALUE."""
    if not option:
        return None
    method, value = option
    try:
        return method, float(value)
    except ValueError:
        raise ModelToolkitError(f"--dynamic {method} {value!r}: write a number") from None


DynamicOption = Annotated[
    tuple[str, str] | None,
    typer.Option(
        metavar="METHOD VALUE",
        help="Choose each layer's rank, up to --rank: sv-ratio R, sv-fro F or sv-cumulative C.",
    ),
]


@lora_app.command("extract")
def lora_extract(
    tuned: Annotated[Path, typer.Argument(help="The fine-tuned model.")],
    base: Annotated[Path, typer.Argument(help="The model it was tuned from.")],
    rank: Annotated[
        int, typer.Option(help="The rank of linear layers (the most, with --dynamic).")
    ] = 32,
    conv_rank: Annotated[
        int | None, typer.Option(help="Also extract 3x3 convolutions, at this rank.")
    ] = None,
    dynamic: DynamicOption = None,
    min_diff: Annotated[
        float, typer.Option(help="Leave out layers that differ by no more than this.")
    ] = 0.0,
    exact: Annotated[
        bool, typer.Option(help="The full SVD of every layer (slower; the same top factors).")
    ] = False,
    output: OutputOption = None,
    precision: PrecisionOption = "keep",
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
) -> None:
    """Extract a LoRA (sd-scripts' format) from a fine-tuned model and its base: one SVD per
    layer, one layer in memory at a time."""
    from . import operations

    dtype = precision_dtype(precision)
    with open_model(tuned) as a, open_model(base) as b:
        plan, timing = operations.lora_extract(
            a, b, rank, conv_rank, _dynamic(dynamic), dtype, min_diff, exact
        )
        stem = output_stem("lora-extract", stem_of(tuned.name), f"lora-r{rank}")
        target = output or free_name(tuned.parent, stem, ".safetensors")
        _write(plan, target, [tuned, base], overwrite, as_json, tuned.stat().st_size, False)
        echo(timing.text(), err=True)


@lora_app.command("resize")
def lora_resize(
    lora: Annotated[Path, typer.Argument(help="The LoRA.")],
    rank: Annotated[int, typer.Option(help="The new rank (the most, with --dynamic).")],
    dynamic: DynamicOption = None,
    output: OutputOption = None,
    precision: PrecisionOption = "keep",
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
) -> None:
    """Give a LoRA another rank: each layer factored again by SVD."""
    from . import operations

    dtype = precision_dtype(precision)
    with open_model(lora) as opened:
        plan, timing = operations.lora_resize(opened, rank, _dynamic(dynamic), dtype)
        _write_lora(plan, lora, "lora-resize", f"r{rank}", output, overwrite, as_json)
        echo(timing.text(), err=True)


@lora_app.command("convert")
def lora_convert(
    lora: Annotated[Path, typer.Argument(help="The LoRA.")],
    to: Annotated[str, typer.Option(help="kohya (sd-scripts), diffusers or peft.")],
    output: OutputOption = None,
    precision: PrecisionOption = "keep",
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
) -> None:
    """Write a LoRA in another trainer's names, exactly (fused layers split or joined)."""
    from . import operations

    dtype = precision_dtype(precision)
    with open_model(lora) as opened:
        plan = operations.lora_convert(opened, to, dtype)
        _write_lora(plan, lora, "lora-convert", to, output, overwrite, as_json)


def _write_lora(
    plan: "Plan",
    lora: Path,
    operation: str,
    made: str,
    output: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """A LoRA operation's output: next to the LoRA, named after what was made, unless -o."""
    stem = output_stem(operation, stem_of(lora.name), made)
    target = output or free_name(lora.parent, stem, ".safetensors")
    _write(plan, target, [lora], overwrite, as_json, lora.stat().st_size, False)


@app.command()
def build(
    arch: Annotated[str, typer.Argument(metavar="ARCH", help="SD-v1, SD-v2, SD-XL, ...")],
    part: Annotated[
        list[str], typer.Option(help="CLASS=FILE, or CLASS=FILE:COMPONENT; once per class.")
    ],
    output: OutputOption = None,
    precision: PrecisionOption = "keep",
    allow_partial: Annotated[bool, typer.Option(help="Allow missing classes.")] = False,
    overwrite: OverwriteOption = False,
    as_json: JsonOption = False,
) -> None:
    """Build a new model of an architecture from components taken from several files."""
    from . import operations

    dtype = precision_dtype(precision)
    specs = []
    for item in part:
        cls, sep, rest = item.partition("=")
        if not sep or not rest:
            raise ModelToolkitError(f"--part {item!r}: write CLASS=FILE")
        path_text, _, component = rest.partition(":")
        specs.append((cls, Path(path_text), component or None))
    with ExitStack() as stack:
        opened = [
            (cls, stack.enter_context(open_model(path)), component)
            for cls, path, component in specs
        ]
        try:
            plan = operations.build(arch, opened, dtype, allow_partial)
        except MissingPartsError as exc:
            raise MissingPartsError(
                f"{exc}: add --part CLASS=FILE for each, or --allow-partial"
            ) from None
        paths = [path for _, path, _ in specs]
        folder = paths[0].parent if paths else Path.cwd()
        target = output or free_name(folder, arch, ".safetensors")
        _write(plan, target, paths, overwrite, as_json, sum(p.stat().st_size for p in paths), False)


@app.command(name="hash")
def hash_files(
    files: Annotated[list[Path], typer.Argument(help="Files to hash.")],
    algo: Annotated[
        list[str] | None,
        typer.Option(help="sha256, autov1, autov2, autov3, blake3, crc32 (default: all)."),
    ] = None,
    webui_cache: Annotated[
        Path | None,
        typer.Option(help="AUTOMATIC1111's cache.json: use its current hashes, add ours."),
    ] = None,
    title: Annotated[
        str | None, typer.Option(help="The cache entry's title (default: checkpoint/NAME).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The hashes model hubs use (AutoV1/V2/V3, SHA-256, BLAKE3, CRC32), in one read."""
    from .hashes import (
        ALGORITHMS,
        compute_hashes,
        default_title,
        read_webui_cache,
        write_webui_cache,
    )

    wanted = tuple(algo) if algo else ALGORITHMS
    results = []
    for path in files:
        if not path.is_file():
            raise ModelToolkitError(f"{path} is not a file")
        entry_title = title or default_title(path)
        cached = read_webui_cache(webui_cache, path, entry_title) if webui_cache else {}
        needed = tuple(a for a in wanted if a not in cached)
        with _progress(path.stat().st_size, f"hashing {path.name}") as progress:
            result = compute_hashes(path, needed, progress)
        result.values = {a: cached.get(a, result.values.get(a)) for a in wanted}
        if webui_cache:
            write_webui_cache(webui_cache, path, entry_title, result.values)
        results.append(result)
    if as_json:
        rows = [
            {"file": str(r.path), "size": r.size, **r.values, "notes": r.notes} for r in results
        ]
        echo(json.dumps(rows, indent=2))
        return
    for result in results:
        echo(result.path)
        for name, value in result.values.items():
            echo(f"  {name:<7} {value if value is not None else '-'}")
        for note in result.notes:
            echo(f"  ({note})")


@app.command()
def metadata(
    file: Annotated[Path, typer.Argument(help="The model file.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE to set (repeatable).")
    ] = None,
    remove: Annotated[list[str] | None, typer.Option(help="KEY to remove (repeatable).")] = None,
    from_json: Annotated[
        Path | None, typer.Option(help="A JSON object of keys to set (values: text or JSON).")
    ] = None,
    output: OutputOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
) -> None:
    """Show a file's metadata readably, or edit it (the file is rewritten atomically)."""
    from .formats.safetensors import metadata_as_strings
    from .metadata import describe
    from .operations import edit_metadata
    from .write import write_plan

    sets: dict[str, str] = {}
    if from_json is not None:
        try:
            loaded = json.loads(from_json.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelToolkitError(f"{from_json} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ModelToolkitError(f"{from_json} must hold a JSON object")
        sets.update(metadata_as_strings(loaded))
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ModelToolkitError(f"--set {item!r}: write KEY=VALUE")
        sets[key] = value
    with open_model(file) as model:
        if not sets and not remove:
            if output is not None:
                raise ModelToolkitError("nothing to change: give --set, --remove or --from-json")
            if as_json:
                echo(json.dumps(model.metadata, indent=2, default=str))
            else:
                echo(describe(model.metadata), nl=False)
            return
        plan = edit_metadata(model, sets, remove or [])
        target = output or file
        if target.suffix.lower() != ".safetensors":
            raise ModelToolkitError("the output must be a .safetensors file")
        with _progress(plan.nbytes, f"writing {target.name}") as progress:
            write_plan(plan, target, overwrite=output is None, progress=progress)
    echo(f"wrote {target}")
    echo("note: the file's SHA-256, AutoV2, BLAKE3 and CRC32 changed; AutoV3 did not", err=True)


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(help="The first model file.")],
    b: Annotated[Path, typer.Argument(help="The second model file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Compare two models per component class: identical, how different, or absent."""
    from .diff import diff_models

    with open_model(a) as model_a, open_model(b) as model_b:
        result = diff_models(model_a, model_b)
    if as_json:
        echo(json.dumps(result.as_dict(), indent=2))
        return
    echo(f"A: {a} ({result.architecture_a or 'unknown'})")
    echo(f"B: {b} ({result.architecture_b or 'unknown'})")
    width = max((len(c.cls) for c in result.classes), default=0)
    for item in result.classes:
        text = item.status
        if item.status == "different":
            text += (
                f": max |A-B| {item.max_abs_diff:.6g}, mean {item.mean_abs_diff:.6g}, "
                f"cosine {item.cosine_similarity:.6f}"
            )
        if item.status in ("identical", "different"):
            text += f" ({item.tensors} tensors)"
        if item.mismatched_shapes:
            text += f"; shapes differ: {', '.join(item.mismatched_shapes[:3])}"
        if item.component_a and item.component_b and item.component_a != item.component_b:
            text += f" [{item.component_a} vs {item.component_b}]"
        echo(f"{item.cls:<{width}}  {text}")
    for side, keys in (("A", result.only_in_a), ("B", result.only_in_b)):
        if keys:
            shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
            echo(f"only in {side}: {len(keys)} keys ({shown})")


@app.command()
def scan(
    folders: Annotated[list[Path], typer.Argument(help="Folders (or files) to scan.")],
    hashes: Annotated[bool, typer.Option(help="Also compute SHA-256, AutoV2, AutoV3.")] = False,
    db: Annotated[
        Path | None, typer.Option(help="The index file (default: in your data folder).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel files (default: cores).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    header_only: Annotated[
        bool,
        typer.Option(
            "--header-only",
            help="Read headers only: no weight fingerprints or known components (fastest).",
        ),
    ] = False,
) -> None:
    """Identify every model file in a collection; find duplicates and what can be reclaimed."""
    from .library import Library, default_db, summary_counts

    library = Library(db or default_db())
    try:
        if sys.stderr.isatty() and not as_json:
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task("scanning", total=None)

                def show(done: int, total: int, name: str) -> None:
                    bar.update(task, completed=done, total=total, description=name[:40])

                result = library.scan(folders, hashes, workers, show, header_only)
        else:
            result = library.scan(folders, hashes, workers, header_only=header_only)
    finally:
        library.close()
    if as_json:
        echo(json.dumps(result.as_dict(), indent=2))
        return
    counts = summary_counts(result)
    echo(
        f"{len(result.files)} files ({result.from_index} from the index, "
        f"{result.scanned} scanned): "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    )
    for path, record in result.files.items():
        arch = record.get("architecture") or record["status"]
        precision = record.get("precision") or "-"
        prunable = record.get("prunable_bytes", 0)
        extra = f", prunable {human(prunable)}" if prunable > 0 else ""
        if record.get("error"):
            extra += f": {printable(record['error'])}"
        echo(f"  {path}: {arch}, {precision}, {human(record['size'])}{extra}")
    for group in result.duplicates:
        echo(f"identical files ({human(group['size'])} each): " + ", ".join(group["files"]))
    for group in result.shared_components:
        name = f"the {group['known']}" if group["known"] else group["class"]
        echo(
            f"{name} ({group['component']} {group['fingerprint'][:8]}) is in "
            f"{len(group['files'])} files: " + ", ".join(group["files"])
        )
    echo(f"reclaimable: {human(result.reclaimable_bytes)}")


@app.command()
def autoprune(
    root: Annotated[
        Path, typer.Argument(help="The models folder (webui models/ or ComfyUI models/).")
    ],
    layout: Annotated[str, typer.Option(help="auto, a1111 or comfyui.")] = "auto",
    inbox: Annotated[
        Path | None, typer.Option(help="The inbox (default: ROOT/Autoprune or ROOT/autoprune).")
    ] = None,
    folder: Annotated[
        list[str] | None,
        typer.Option(help="KIND=DIR: file this kind elsewhere (checkpoint, vae, lora, ...)."),
    ] = None,
    watch: Annotated[
        bool, typer.Option(help="Keep running; handle new files as they arrive.")
    ] = False,
    precision: PrecisionOption = "auto",
    keep_ema: Annotated[bool, typer.Option(help="Keep the EMA weights.")] = False,
    fix_clip: FixClipOption = False,
    dry_run: Annotated[bool, typer.Option(help="Say what would happen; change nothing.")] = False,
    settle: Annotated[
        float, typer.Option(help="Seconds a file must be unchanged before it is taken.")
    ] = 2.0,
    as_json: JsonOption = False,
) -> None:
    """Prune every model in the inbox and file it into its folder; bad files go to Failed/."""
    import signal
    import threading

    from .autoprune import Autopruner, Options, make_layout
    from .autoprune import watch as watch_inbox

    folders = {}
    for item in folder or []:
        kind, sep, path = item.partition("=")
        if not sep or not path:
            raise ModelToolkitError(f"--folder {item!r}: write KIND=DIR")
        folders[kind] = Path(path)
    chosen = make_layout(root, layout, inbox, folders)
    options = Options(precision_dtype(precision), keep_ema, fix_clip, dry_run, settle)
    stop = threading.Event()

    def interrupt(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        echo("stopping after the current file (Ctrl-C again to abort it)", err=True)

    signal.signal(signal.SIGINT, interrupt)
    pruner = Autopruner(chosen, options)
    if not as_json:
        echo(f"{chosen.inbox} ({chosen.name} layout){' [dry run]' if dry_run else ''}")
    if watch:

        def show(outcome: "Outcome") -> None:
            echo(json.dumps(outcome.as_dict()) if as_json else _outcome_line(outcome))

        watch_inbox(pruner, stop, show)
        return
    outcomes = pruner.run_once(stop)
    if as_json:
        summary = {
            "layout": chosen.name,
            "inbox": str(chosen.inbox),
            "dry_run": dry_run,
            "files": [o.as_dict() for o in outcomes],
            "saved_bytes": sum(o.saved_bytes for o in outcomes),
        }
        echo(json.dumps(summary, indent=2))
    else:
        for outcome in outcomes:
            echo(_outcome_line(outcome))
        filed = [o for o in outcomes if o.status in ("filed", "recovered")]
        failed = [o for o in outcomes if o.status == "failed"]
        saved = sum(o.saved_bytes for o in outcomes)
        echo(
            f"{len(filed)} filed, {len(failed)} failed, "
            f"{len(outcomes) - len(filed) - len(failed)} left in the inbox; saved {human(saved)}"
        )
    if any(o.status == "error" for o in outcomes):
        raise typer.Exit(1)


def _outcome_line(outcome: "Outcome") -> str:
    """One line per file: what it was and where it went, or why not."""
    what = f"{outcome.architecture} {outcome.kind}" if outcome.kind else ""
    if outcome.status in ("filed", "recovered"):
        saved = f", saved {human(outcome.saved_bytes)}" if outcome.saved_bytes > 0 else ""
        note = f" ({outcome.reason})" if outcome.reason and outcome.status == "filed" else ""
        return f"{outcome.file}: {what} -> {outcome.destination}{saved}{note}"
    if outcome.status == "failed":
        return f"{outcome.file}: failed ({outcome.reason}) -> {outcome.destination}"
    return f"{outcome.file}: {outcome.status} ({outcome.reason}), left in the inbox"


@app.command()
def ui(
    models_dir: Annotated[
        list[Path] | None,
        typer.Option(help="A models folder (repeatable); default: a folder with the demo model."),
    ] = None,
    layout: Annotated[str, typer.Option(help="auto, a1111 or comfyui.")] = "auto",
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port to listen on.")] = 7860,
) -> None:
    """The web UI: the original toolkit's tab, in a browser."""
    from .autoprune import make_layout

    try:
        from .ui.app import build_ui, enable_queue
        from .ui.folders import ModelFolders
        from .ui.server import serve
    except ImportError as exc:
        raise ModelToolkitError(
            f"the web UI needs gradio ({exc.name} is missing): pip install 'sd-model-toolkit[ui]'"
        ) from None
    roots = models_dir or [_demo_models()]
    folders = ModelFolders.from_layouts(
        make_layout(root, "a1111" if not models_dir else layout) for root in roots
    )
    blocks = build_ui(folders)
    enable_queue(blocks)
    echo(f"Model Toolkit on http://{host}:{port} (models: {', '.join(map(str, roots))})")
    serve(blocks, host, port)


def _demo_models() -> Path:
    """A models folder holding the demo model, so a new user sees the UI working at once."""
    from .demo import write_demo

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    root = Path(base) / "model-toolkit" / "demo-models"
    checkpoints = root / "Stable-diffusion"
    checkpoints.mkdir(parents=True, exist_ok=True)
    if not (checkpoints / "demo.safetensors").exists():
        write_demo(checkpoints / "demo.safetensors")
    return root


@app.command()
def demo(
    output: Annotated[Path, typer.Argument(help="Where to write the demo model.")] = Path(
        "demo.safetensors"
    ),
    overwrite: OverwriteOption = False,
) -> None:
    """Write the built-in demo model: a bloated SD-v1 (fp32, EMA, junk, broken position ids)."""
    from .demo import write_demo

    path = write_demo(output, overwrite=overwrite)
    used = path.stat().st_blocks * 512
    echo(
        f"wrote {path}: a demo SD-v1 of {human(path.stat().st_size)} "
        f"({human(used)} on disk: its zero weights are holes)"
    )


def main() -> None:
    """The full command line: every command, typer's help and its checks of arguments (bad
    arguments: status 2); the library's errors become one line (console.guarded)."""
    guarded(app)
