"""Hashes, metadata, library scan and diff: the tools for managing a whole collection."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import blake3
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import as_bytes, key_list, run_mtk, write_sparse_safetensors
from model_toolkit import errors as mtk_errors
from model_toolkit.architectures import keylists
from model_toolkit.library import Library, scan_file

REAL_SCAN_FILE = scan_file

SD1 = key_list("Checkpoint-SD1-LDM")


def mtk(*args, check=True):
    return run_mtk(*args, check=check, timeout=600)


# -- hashes -------------------------------------------------------------------------------


@pytest.fixture
def three_mib_safetensors(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {"a": torch.from_numpy(rng.standard_normal((768, 1024)).astype(np.float32))}
    path = tmp_path / "model.safetensors"
    save_file(tensors, path, metadata={"note": "x"})
    return path


def test_hashes_match_independent_computations(three_mib_safetensors):
    path = three_mib_safetensors
    data = path.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    [row] = json.loads(mtk("hash", path, "--json").stdout)
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["autov2"] == hashlib.sha256(data).hexdigest()[:10]
    assert row["autov1"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert row["autov3"] == hashlib.sha256(data[8 + header :]).hexdigest()
    assert row["blake3"] == blake3.blake3(data).hexdigest()
    assert row["crc32"] == f"{zlib.crc32(data):08x}"
    assert row["size"] == len(data)


def test_small_files_and_checkpoints_say_which_hash_does_not_apply(tmp_path):
    path = tmp_path / "small.ckpt"
    torch.save({"w": torch.ones(3)}, path)
    [row] = json.loads(mtk("hash", path, "--json").stdout)
    assert row["autov1"] is None and row["autov3"] is None
    assert row["notes"] == [
        "AutoV3 is defined for .safetensors files only",
        "AutoV1 is not defined for files under 2 MiB",
    ]
    text = mtk("hash", path, "--algo", "crc32", "--algo", "autov1").stdout
    assert text.splitlines() == [
        str(path),
        f"  crc32   {zlib.crc32(path.read_bytes()):08x}",
        "  autov1  -",
        "  (AutoV1 is not defined for files under 2 MiB)",
    ]


def test_webui_cache_round_trip(three_mib_safetensors, tmp_path):
    path = three_mib_safetensors
    cache = tmp_path / "cache.json"
    mtk("hash", path, "--webui-cache", cache)
    data = json.loads(cache.read_text())
    full = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = data["hashes"]["checkpoint/model.safetensors"]
    assert entry == {"mtime": os.path.getmtime(path), "sha256": full}
    assert data["hashes-addnet"]["checkpoint/model.safetensors"]["sha256"] != full
    # A current entry is trusted as the webui trusts it (the file is not read again) ...
    entry["sha256"] = "f" * 64
    cache.write_text(json.dumps(data))
    [row] = json.loads(
        mtk("hash", path, "--algo", "sha256", "--webui-cache", cache, "--json").stdout
    )
    assert row["sha256"] == "f" * 64
    # ... and a file changed since is hashed again, and the cache updated.
    os.utime(path, (entry["mtime"] + 10, entry["mtime"] + 10))
    [row] = json.loads(
        mtk("hash", path, "--algo", "sha256", "--webui-cache", cache, "--json").stdout
    )
    assert row["sha256"] == full
    assert json.loads(cache.read_text())["hashes"]["checkpoint/model.safetensors"]["sha256"] == full


# -- metadata -----------------------------------------------------------------------------


def test_metadata_edit_keeps_every_tensor_bit_and_autov3(three_mib_safetensors):
    path = three_mib_safetensors
    before = {n: as_bytes(t) for n, t in _load(path).items()}
    [old] = json.loads(mtk("hash", path, "--json").stdout)
    tags = json.dumps({"5_cats": {"cat": 12, "sitting": 3}})
    result = mtk("metadata", path, "--set", "ss_tag_frequency=" + tags, "--remove", "note")
    assert "AutoV3 did not" in result.stderr
    with safe_open(path, "pt") as handle:
        assert handle.metadata() == {"ss_tag_frequency": tags}
    assert {n: as_bytes(t) for n, t in _load(path).items()} == before
    [new] = json.loads(mtk("hash", path, "--json").stdout)
    assert new["autov3"] == old["autov3"] and new["sha256"] != old["sha256"]
    shown = mtk("metadata", path).stdout
    assert shown == (
        "Training (kohya)\n  ss_tag_frequency:\n"
        "    5_cats: 2 tags; most frequent: cat (12), sitting (3)\n"
    )
    assert json.loads(mtk("metadata", path, "--json").stdout) == {"ss_tag_frequency": tags}


def test_metadata_from_json_to_another_file_and_errors(three_mib_safetensors, tmp_path):
    path = three_mib_safetensors
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"modelspec.title": "Cat", "ss_network_dim": 16}))
    out = tmp_path / "out.safetensors"
    mtk("metadata", path, "--from-json", values, "-o", out)
    with safe_open(out, "pt") as handle:
        assert handle.metadata() == {"note": "x", "modelspec.title": "Cat", "ss_network_dim": "16"}
    with safe_open(path, "pt") as handle:
        assert handle.metadata() == {"note": "x"}  # the input is untouched
    ckpt = tmp_path / "m.ckpt"
    torch.save({"w": torch.ones(2)}, ckpt)
    bad = mtk("metadata", ckpt, "--set", "a=b", check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: m.ckpt is a torch-zip file: metadata can be edited in .safetensors only"
    )
    missing = mtk("metadata", path, "--remove", "nope", check=False)
    assert missing.stderr.strip() == "error: no metadata key 'nope' to remove"


def test_modelspec_fields_and_single_pass_hash(tmp_path):
    vae = keylists.load("VAE-v1-SD")
    rng = np.random.default_rng(0)
    fill = {vae[0][0]: rng.standard_normal(vae[0][1]).astype(np.float32)}
    source = write_sparse_safetensors(tmp_path / "vae.safetensors", vae, "F32", fill)
    out = tmp_path / "my-vae.safetensors"
    mtk("prune", source, "-o", out, "--modelspec")
    with safe_open(out, "pt") as handle:
        meta = handle.metadata()
    [row] = json.loads(mtk("hash", out, "--json").stdout)
    assert meta["modelspec.hash_sha256"] == "0x" + row["autov3"]
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/vae"
    assert meta["modelspec.title"] == "my-vae"
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    refused = mtk("convert", source, tmp_path / "x.ckpt", "--modelspec", check=False)
    assert refused.stderr.strip() == "error: --modelspec needs a .safetensors output"


def _load(path):
    with safe_open(path, "pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118


# -- a library with planted duplicates ------------------------------------------------------


def sd1_fill(seed: int, dtype=np.float32, vae_seed: int = 100) -> dict[str, np.ndarray]:
    """Random values in a few UNET and CLIP tensors (per model) and in the VAE (shared)."""
    fill = {}
    for prefix, chosen in (("model.diffusion_model.", seed), ("cond_stage_model.", seed)):
        names = [(n, s) for n, s in SD1 if n.startswith(prefix) and len(s) >= 1][:6]
        rng = np.random.default_rng(chosen)
        fill.update({n: rng.standard_normal(s).astype(dtype) for n, s in names})
    rng = np.random.default_rng(vae_seed)
    vae = [(n, s) for n, s in SD1 if n.startswith("first_stage_model.")][:6]
    fill.update({n: rng.standard_normal(s).astype(np.float32).astype(dtype) for n, s in vae})
    ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    fill[ids] = (np.arange(77, dtype=np.int64).reshape(1, 77), "I64")
    return fill


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    (root / "checkpoints").mkdir()
    (root / "vae").mkdir()
    m1 = write_sparse_safetensors(root / "checkpoints" / "m1.safetensors", SD1, "F32", sd1_fill(1))
    mtk("convert", m1, root / "checkpoints" / "m1-fp16.safetensors", "--precision", "fp16")
    # A sparse copy: the same bytes without writing gigabytes of zeros.
    subprocess.run(
        ["cp", "--sparse=always", m1, root / "checkpoints" / "renamed copy.safetensors"], check=True
    )
    m2_fill = sd1_fill(2, np.float16)  # an fp16 model with the same VAE (rounded to fp16)
    write_sparse_safetensors(root / "checkpoints" / "m2.safetensors", SD1, "F16", m2_fill)
    mtk("extract", m1, "VAE-v1", "-o", root / "vae" / "vae.safetensors")
    save_file({"something": torch.zeros(4)}, root / "vae" / "unknown.safetensors")
    with open(root / "evil.ckpt", "wb") as handle:
        import pickle
        import zipfile

        class Evil:
            def __reduce__(self):
                return (os.system, ("true",))

        with zipfile.ZipFile(handle, "w") as archive:
            archive.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))
    return root


def test_scan_finds_exactly_the_planted_duplicates(library, tmp_path):
    db = tmp_path / "index.sqlite"
    report = json.loads(mtk("scan", library, "--db", db, "--json").stdout)
    files = {os.path.relpath(p, library): r for p, r in report["files"].items()}
    assert {p: r["status"] for p, r in files.items()} == {
        "checkpoints/m1-fp16.safetensors": "ok",
        "checkpoints/m1.safetensors": "ok",
        "checkpoints/m2.safetensors": "ok",
        "checkpoints/renamed copy.safetensors": "ok",
        "evil.ckpt": "unsafe",
        "vae/unknown.safetensors": "unknown",
        "vae/vae.safetensors": "ok",
    }
    assert files["checkpoints/m1.safetensors"]["architecture"] == "SD-v1"
    assert files["checkpoints/m1.safetensors"]["precision"] == "F32"
    assert files["checkpoints/m1-fp16.safetensors"]["precision"] == "F16"
    assert "posix.system" in files["evil.ckpt"]["error"]

    def rel(paths):
        return sorted(os.path.relpath(p, library) for p in paths)

    assert [rel(d["files"]) for d in report["duplicates"]] == [
        ["checkpoints/m1.safetensors", "checkpoints/renamed copy.safetensors"]
    ]
    shared = {g["class"]: rel(g["files"]) for g in report["shared_components"]}
    m1_family = [
        "checkpoints/m1-fp16.safetensors",
        "checkpoints/m1.safetensors",
        "checkpoints/renamed copy.safetensors",
    ]
    assert shared == {
        "VAE-v1": sorted([*m1_family, "checkpoints/m2.safetensors", "vae/vae.safetensors"]),
        "UNET-v1": m1_family,
        "CLIP-v1": m1_family,
    }
    pruning = sum(r.get("prunable_bytes", 0) for r in files.values())
    copy_size = files["checkpoints/m1.safetensors"]["size"]
    assert report["reclaimable_bytes"] == pruning + copy_size
    assert report["from_index"] == 0

    again = json.loads(mtk("scan", library, "--db", db, "--json").stdout)
    assert (again["from_index"], again["scanned"]) == (7, 0)
    assert again["shared_components"] == report["shared_components"]

    copies = [library / "checkpoints" / n for n in ("m1.safetensors", "renamed copy.safetensors")]
    hashed = json.loads(mtk("scan", *copies, "--db", db, "--hashes", "--json").stdout)
    m1_row = hashed["files"][str(library / "checkpoints" / "m1.safetensors")]
    digest = hashlib.sha256((library / "checkpoints" / "m1.safetensors").read_bytes()).hexdigest()
    assert m1_row["hashes"]["sha256"] == digest
    assert [d["by"] for d in hashed["duplicates"]] == ["sha256"]


def test_a_header_only_scan_says_what_headers_say_and_a_full_scan_redoes_it(library, tmp_path):
    db = tmp_path / "index.sqlite"
    quick = json.loads(mtk("scan", library, "--db", db, "--json", "--header-only").stdout)
    statuses = {os.path.relpath(p, library): r["status"] for p, r in quick["files"].items()}
    assert statuses["evil.ckpt"] == "unsafe" and statuses["vae/unknown.safetensors"] == "unknown"
    assert "posix.system" in quick["files"][str(library / "evil.ckpt")]["error"]
    m1 = quick["files"][str(library / "checkpoints" / "m1.safetensors")]
    assert (m1["architecture"], m1["precision"], m1["header_only"]) == ("SD-v1", "F32", True)
    assert "fingerprints" not in m1 and "known" not in m1
    assert quick["shared_components"] == [] and quick["duplicates"] == []
    full = json.loads(mtk("scan", library, "--db", db, "--json").stdout)
    assert full["from_index"] == 0  # header-only records do not serve a full scan
    assert full["shared_components"]
    again = json.loads(mtk("scan", library, "--db", db, "--json", "--header-only").stdout)
    assert (again["from_index"], again["scanned"]) == (7, 0)  # full records serve it too


def test_scan_names_known_components(tmp_path):
    """A VAE whose metric is SD-v1's (0): named in the shared-component report."""
    vae = keylists.load("VAE-v1-SD")
    name, shape = "decoder.up.0.block.0.conv1.weight", (128, 256, 3, 3)
    assert (name, shape) in vae
    values = np.zeros(shape, np.float32).reshape(-1)
    values[:77343] = 1.0  # 77343 * (sigmoid(1) - 0.5) = 17870.67, SD-v1's VAE sum
    source = write_sparse_safetensors(
        tmp_path / "a.safetensors", vae, "F32", {name: values.reshape(shape)}
    )
    mtk("convert", source, tmp_path / "b.ckpt", "--precision", "fp16")
    db = tmp_path / "index.sqlite"
    report = json.loads(mtk("scan", tmp_path, "--db", db, "--json").stdout)
    assert [r["known"] for r in report["files"].values()] == [["SD-v1 VAE"], ["SD-v1 VAE"]]
    [group] = report["shared_components"]
    assert (group["class"], group["known"]) == ("VAE-v1", "SD-v1 VAE")
    lines = mtk("scan", tmp_path, "--db", db).stdout.splitlines()
    assert lines[3].startswith("the SD-v1 VAE (VAE-v1-SD ")
    assert lines[3].endswith(f"is in 2 files: {tmp_path / 'a.safetensors'}, {tmp_path / 'b.ckpt'}")


def test_an_interrupted_scan_resumes(library, tmp_path):
    db = tmp_path / "index.sqlite"
    index = Library(db)

    def interrupt_after_two(done, total, name):
        if done == 2:
            raise KeyboardInterrupt

    files = [library / "evil.ckpt", *sorted((library / "vae").iterdir())]
    with pytest.raises(KeyboardInterrupt):
        index.scan(files, workers=1, progress=interrupt_after_two)
    result = index.scan(files, workers=2)
    index.close()
    assert (result.from_index, result.scanned) == (2, 1)
    assert [r["status"] for r in result.files.values()] == ["unsafe", "unknown", "ok"]


def crashing_reader(path_text, with_hashes, header_only=False):
    """The real scan_file, but it dies on a-crash*, hangs on b-hang* (in a forked worker)."""
    name = Path(path_text).name
    if "crash" in name:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "hang" in name:
        time.sleep(600)
    return REAL_SCAN_FILE(path_text, with_hashes, header_only)


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="the stand-in needs fork"
)
def test_a_crashing_or_hanging_file_is_one_record_and_the_scan_goes_on(tmp_path, monkeypatch):
    """A reader that dies (SIGSEGV) or hangs on one file: that file's record says so, a new
    worker takes the next file, and nothing of it is cached."""
    from model_toolkit import library as library_module

    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("a-crash.safetensors", "b-hang.safetensors", "c-good.safetensors", "d.ckpt"):
        (folder / name).write_bytes(b"x" * 10)
    monkeypatch.setattr(library_module, "scan_file", crashing_reader)
    for workers in (1, 2):
        index = Library(tmp_path / f"index{workers}.sqlite")
        index.file_timeout = lambda size: 3.0
        index.pool_context = multiprocessing.get_context("fork")  # the stand-in reaches it
        started = time.monotonic()
        result = index.scan([folder], workers=workers)
        assert time.monotonic() - started < 30
        records = {Path(p).name: r for p, r in result.files.items()}
        assert records["a-crash.safetensors"]["error"] == "the reader crashed (signal 11)"
        assert records["b-hang.safetensors"]["error"] == "the reader timed out after 3 s"
        assert records["c-good.safetensors"]["status"] == "unreadable"
        assert records["d.ckpt"]["status"] == "unreadable"
        assert index.scan([folder], workers=workers).from_index == 2  # errors are retried
        index.close()


# -- diff ---------------------------------------------------------------------------------


def test_diff_on_known_pairs(library):
    folder = library / "checkpoints"
    same = json.loads(
        mtk("diff", folder / "m1.safetensors", folder / "renamed copy.safetensors", "--json").stdout
    )
    assert [(c["cls"], c["status"]) for c in same["classes"]] == [
        ("UNET-v1", "identical"),
        ("VAE-v1", "identical"),
        ("CLIP-v1", "identical"),
    ]
    half = json.loads(
        mtk("diff", folder / "m1.safetensors", folder / "m1-fp16.safetensors", "--json").stdout
    )
    for item in half["classes"]:
        if item["cls"] == "CLIP-v1" or item["cls"] == "UNET-v1" or item["cls"] == "VAE-v1":
            assert item["status"] == "different"
            assert 0 < item["max_abs_diff"] < 0.01  # fp16 rounding of N(0, 1) values
            assert item["cosine_similarity"] > 0.9999999
    other = json.loads(
        mtk("diff", folder / "m1.safetensors", folder / "m2.safetensors", "--json").stdout
    )
    by_class = {c["cls"]: c for c in other["classes"]}
    assert {c: item["status"] for c, item in by_class.items()} == dict.fromkeys(
        ["UNET-v1", "VAE-v1", "CLIP-v1"], "different"
    )
    assert by_class["VAE-v1"]["max_abs_diff"] < 0.01  # the same VAE, in fp16 in m2
    assert by_class["UNET-v1"]["max_abs_diff"] > 1  # other weights
    vae = json.loads(
        mtk("diff", folder / "m1.safetensors", library / "vae" / "vae.safetensors", "--json").stdout
    )
    status = {c["cls"]: c["status"] for c in vae["classes"]}
    assert status == {"UNET-v1": "only in A", "VAE-v1": "identical", "CLIP-v1": "only in A"}
    text = mtk("diff", folder / "m1.safetensors", library / "vae" / "vae.safetensors").stdout
    assert text.splitlines()[:5] == [
        f"A: {folder / 'm1.safetensors'} (SD-v1)",
        f"B: {library / 'vae' / 'vae.safetensors'} (VAE-v1)",
        "UNET-v1  only in A",
        "VAE-v1   identical (248 tensors)",
        "CLIP-v1  only in A",
    ]


# -- the same parts in process (no subprocess: what the CLI calls) -------------------------


def test_compute_hashes_in_process(three_mib_safetensors):
    from model_toolkit.hashes import compute_hashes

    data = three_mib_safetensors.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    result = compute_hashes(three_mib_safetensors, ("sha256", "autov3", "crc32", "blake3"))
    assert result.values["sha256"] == hashlib.sha256(data).hexdigest()
    assert result.values["autov3"] == hashlib.sha256(data[8 + header :]).hexdigest()
    assert result.values["crc32"] == f"{zlib.crc32(data):08x}"
    assert result.values["blake3"] == blake3.blake3(data).hexdigest()
    with pytest.raises(mtk_errors.UsageError, match="unknown hash 'md5'"):
        compute_hashes(three_mib_safetensors, ("md5",))


@pytest.mark.parametrize("zlib_ng_installed", [True, False])
def test_crc32_is_zlibs_with_zlib_ng_or_without(
    three_mib_safetensors, monkeypatch, zlib_ng_installed
):
    from model_toolkit.hashes import compute_hashes

    if not zlib_ng_installed:
        monkeypatch.setitem(sys.modules, "zlib_ng", None)  # import fails: zlib's own
    else:
        pytest.importorskip("zlib_ng")
    data = three_mib_safetensors.read_bytes()
    values = compute_hashes(three_mib_safetensors, ("crc32",)).values
    assert values == {"crc32": f"{zlib.crc32(data):08x}"}


def test_edit_metadata_is_an_operation(three_mib_safetensors, tmp_path):
    import model_toolkit as m
    from model_toolkit.operations import edit_metadata

    with m.open(three_mib_safetensors) as model:
        plan = edit_metadata(model, {"modelspec.title": "Cat"}, ["note"])
        assert plan.metadata == {"modelspec.title": "Cat"}
        assert [e.is_copy for e in plan.entries] == [True]  # tensors are copied as they are
        out = m.write_plan(plan, tmp_path / "edited.safetensors")
        with pytest.raises(mtk_errors.UsageError, match="no metadata key 'nope' to remove"):
            edit_metadata(model, {}, ["nope"])
    with safe_open(out, "pt") as handle:
        assert handle.metadata() == {"modelspec.title": "Cat"}
    ckpt = tmp_path / "m.ckpt"
    torch.save({"w": torch.ones(2)}, ckpt)
    with m.open(ckpt) as model, pytest.raises(mtk_errors.UsageError, match="torch-zip file"):
        edit_metadata(model, {"a": "b"}, [])


def test_describe_and_parse_metadata_values():
    from model_toolkit.metadata import describe, parse_value, tag_summary

    assert parse_value('{"a": 1}') == {"a": 1} and parse_value("plain") == "plain"
    tags = {"5_cats": {"cat": 12, "sitting": 3}}
    assert tag_summary(tags) == ["5_cats: 2 tags; most frequent: cat (12), sitting (3)"]
    assert describe({"ss_tag_frequency": json.dumps(tags)}) == (
        "Training (kohya)\n  ss_tag_frequency:\n"
        "    5_cats: 2 tags; most frequent: cat (12), sitting (3)\n"
    )


def test_with_modelspec_hashes_the_data_as_it_is_written(tmp_path):
    import model_toolkit as m
    from model_toolkit.metadata import with_modelspec
    from model_toolkit.operations import prune

    vae = keylists.load("VAE-v1-SD")
    source = write_sparse_safetensors(tmp_path / "vae.safetensors", vae, "F32")
    out = tmp_path / "my-vae.safetensors"
    with m.open(source) as model:
        plan, arguments = with_modelspec(prune(model), "my-vae")
        m.write_plan(plan, out, **arguments)
    data = out.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    with safe_open(out, "pt") as handle:
        meta = handle.metadata()
    assert meta["modelspec.hash_sha256"] == "0x" + hashlib.sha256(data[8 + header :]).hexdigest()
    assert meta["modelspec.title"] == "my-vae"


def test_diff_models_in_process(library):
    import model_toolkit as m
    from model_toolkit.diff import diff_models

    folder = library / "checkpoints"
    with m.open(folder / "m1.safetensors") as a, m.open(library / "vae" / "vae.safetensors") as b:
        result = diff_models(a, b)
    assert result.architecture_a == "SD-v1" and result.architecture_b == "VAE-v1"
    assert {c.cls: c.status for c in result.classes} == {
        "UNET-v1": "only in A",
        "VAE-v1": "identical",
        "CLIP-v1": "only in A",
    }


def test_analyze_folder_names_each_part(tmp_path):
    from model_toolkit.analysis import analyze_folder

    folder = tmp_path / "pipeline"
    (folder / "vae").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    vae = key_list("extra/VAE-v1-diffusers")
    write_sparse_safetensors(folder / "vae" / "diffusion_pytorch_model.safetensors", vae, "F16")
    [row] = analyze_folder(folder)
    assert row["folder"] == "vae" and row["tensors"] == len(vae) and row["dtypes"] == ["F16"]
    with pytest.raises(mtk_errors.FormatError, match=r"without model_index\.json"):
        analyze_folder(folder / "vae")
