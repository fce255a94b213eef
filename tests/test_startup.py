"""Start-up (issue #22): `mtk inspect` and `mtk keys` run without the CLI framework, say the
same as the full command line, and identification reads parsed key lists from the cache."""

from __future__ import annotations

import io
import os
import pickletools
import random
import subprocess
import sys
import tarfile

import pytest

from conftest import key_list, run_python, write_sparse_safetensors
from model_toolkit.architectures import keycache
from model_toolkit.entry import quick_command
from model_toolkit.formats import sniff


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    path = tmp_path_factory.mktemp("startup") / "sdxl.safetensors"
    return write_sparse_safetensors(path, key_list("Checkpoint-SDXL-SGM"))


def _both_ways(*args: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The same command through the quick path (`python -m model_toolkit`, as `mtk` runs)
    and through typer's command line (cli.main)."""
    quick = subprocess.run(
        [sys.executable, "-m", "model_toolkit", *args], capture_output=True, text=True
    )
    full = subprocess.run(
        [sys.executable, "-c", "import sys; from model_toolkit.cli import main; main()", *args],
        capture_output=True,
        text=True,
    )
    return quick, full


@pytest.mark.parametrize(
    "args",
    [
        ("inspect", "{f}", "--no-metric"),
        ("inspect", "{f}", "--no-metric", "--json"),
        ("inspect", "--advanced", "{f}", "--no-metric", "--precision=bf16"),
        ("keys", "{f}"),
        ("keys", "{f}", "--json"),
        ("inspect", "{f}.missing"),
        ("inspect", "{f}", "--precision", "fp9"),
        ("--version",),
    ],
)
def test_the_quick_path_says_what_the_full_command_line_says(sdxl, args):
    args = tuple(a.replace("{f}", str(sdxl)) for a in args)
    assert quick_command(list(args)) is not None  # the quick path takes these
    quick, full = _both_ways(*args)
    assert (quick.returncode, quick.stdout, quick.stderr) == (
        full.returncode,
        full.stdout,
        full.stderr,
    )
    assert quick.stdout or quick.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--help"],
        ["inspect"],
        ["inspect", "--help"],
        ["inspect", "a", "b"],
        ["inspect", "a", "--json", "--json"],
        ["inspect", "a", "--precision"],
        ["inspect", "a", "--bogus"],
        ["keys", "a", "--no-metric"],
        ["prune", "a"],
        ["--version", "inspect"],
    ],
)
def test_anything_else_goes_to_the_full_command_line(args):
    assert quick_command(args) is None


def test_a_typo_still_gets_typers_words(sdxl):
    quick, full = _both_ways("inspect", str(sdxl), "--no-metrc")
    assert quick.returncode == full.returncode == 2
    # The usage lines name the program as each was started; typer's message is the same.
    assert quick.stderr.splitlines()[2:] == full.stderr.splitlines()[2:]
    assert "No such option: --no-metrc" in quick.stderr


def test_identifying_imports_neither_typer_nor_numpy_nor_the_pickle_machinery(sdxl):
    script = (
        "import sys\n"
        "from model_toolkit import entry\n"
        "sys.argv = ['mtk', 'inspect', sys.argv[1], '--no-metric']\n"
        "try:\n"
        "    entry.main()\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "heavy = {'typer', 'click', 'rich', 'numpy', 'model_toolkit.cli', 'model_toolkit.plan',\n"
        "         'model_toolkit.write', 'model_toolkit.execute', 'concurrent.futures',\n"
        "         'model_toolkit.formats.unpickler', 'pickle', 'zipfile', 'tarfile', 'tempfile'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    assert run_python(script, sdxl).strip().splitlines()[-1] == "[]"


def test_the_sniffers_constants_are_the_standard_librarys():
    opcodes = {op.code.encode("latin-1")[0] for op in pickletools.opcodes}
    assert opcodes == sniff.PICKLE_OPCODES
    assert sniff.TAR_BLOCK == tarfile.BLOCKSIZE


def _tarfile_accepts(block: bytes) -> bool:
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except (tarfile.HeaderError, ValueError):
        return False
    return True


def test_the_tar_checksum_prefilter_never_refuses_what_tarfile_accepts():
    """sniff tells tar from other files without importing tarfile; where tarfile would take
    the block, so must the prefilter (else a tar checkpoint's pickles go unscanned)."""
    blocks = []
    for form in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=form) as archive:
            info = tarfile.TarInfo("storages")
            info.size = 3
            info.mtime = 2**40 if form == tarfile.GNU_FORMAT else 0  # base-256 in GNU
            archive.addfile(info, io.BytesIO(b"abc"))
        blocks.append(buffer.getvalue()[:512])
    generator = random.Random(0)
    for _ in range(2000):
        if generator.random() < 0.5:  # a real header, its name replaced, checksum made again
            block = bytearray(generator.choice(blocks[:3]))
            block[0:100] = generator.randbytes(100)
            body = block[:148] + b" " * 8 + block[156:]
            signed = generator.random() < 0.5  # old tars summed signed bytes
            total = sum(body) - (256 * sum(b > 127 for b in body) if signed else 0)
            block[148:156] = f"{total:06o}\0 ".encode()
        else:
            block = bytearray(generator.randbytes(512))
        blocks.append(bytes(block))
    blocks.append(b"\0" * 512)
    accepted = 0
    for block in blocks:
        if _tarfile_accepts(block):
            accepted += 1
            assert sniff.is_tar(block)
        assert sniff.is_tar(block) == _tarfile_accepts(block)
    assert accepted > 500


def test_parsed_key_lists_come_from_the_cache_until_their_source_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "list.txt"
    source.write_text("a.weight [4,4]\n")
    made = []

    def make():
        made.append(1)
        return [("a.weight", (len(made), 4))]

    assert keycache.cached("List", (source,), make) == [("a.weight", (1, 4))]
    assert keycache.cached("List", (source,), make) == [("a.weight", (1, 4))]  # cached
    assert len(made) == 1
    source.write_text("a.weight [4,4]\nb.weight [2]\n")  # another size: another entry
    assert keycache.cached("List", (source,), make) == [("a.weight", (2, 4))]
    entries = list(keycache.cache_dir().glob("List@*.marshal"))
    assert len(entries) == 1  # the stale entry is gone
    entries[0].write_bytes(b"\xff not marshal")  # damage is made again, never trusted
    assert keycache.cached("List", (source,), make) == [("a.weight", (3, 4))]
    entries[0].write_bytes(__import__("marshal").dumps({"not": "a list"}))
    assert keycache.cached("List", (source,), make) == [("a.weight", (4, 4))]


def test_a_cache_that_cannot_be_written_costs_only_the_parse(tmp_path, monkeypatch):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    source = tmp_path / "list.txt"
    source.write_text("")
    assert keycache.cached("List", (source,), lambda: [("x", ())]) == [("x", ())]
    assert os.path.isfile(blocked)


def test_identification_is_the_same_from_the_cache(tmp_path, sdxl):
    """A first run (lists parsed and cached) and a second (read from the cache) agree."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "fresh")}
    runs = [
        subprocess.run(
            [sys.executable, "-m", "model_toolkit", "inspect", str(sdxl), "--json", "--no-metric"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and '"SD-XL"' in runs[0]
    assert any((tmp_path / "fresh").rglob("UNET-XL-SD@*.marshal"))
