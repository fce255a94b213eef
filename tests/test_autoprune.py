"""Autoprune: every kind filed into both layouts, conflicts, failures, dry runs, and the
promise that matters most: killed at any moment, no model is ever lost."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import as_bytes, key_list, run_mtk, with_prefix, write_sparse_safetensors
from model_toolkit.architectures import keylists
from model_toolkit.autoprune import Autopruner, Options, make_layout, watch
from model_toolkit.errors import UsageError

SD1 = key_list("Checkpoint-SD1-LDM")


mtk = run_mtk


def component(name, rank=4):
    """A component's real keys, free dimensions (LoRA rank, TI vectors) set to `rank`."""
    return [(n, tuple(rank if d == -1 else d for d in s)) for n, s in keylists.load(name)]


def filled(entries, every=5, seed=0):
    """Random fp32 values for every n-th tensor, so checksums and comparisons mean something."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal(shape).astype(np.float32)
        for index, (name, shape) in enumerate(entries)
        if index % every == 0 and shape and np.prod(shape) < 4_000_000
    }


def lora_entries():
    return component("LoRA-v1-UNET") + component("LoRA-v1-CLIP")


def write_lora_ckpt(path):
    """A LoRA saved by torch as a .ckpt: its values must come out unchanged."""
    generator = torch.Generator().manual_seed(0)
    tensors = {n: torch.randn(s, generator=generator) for n, s in lora_entries()}
    torch.save(tensors, path)
    return tensors


def write_unsafe_ckpt(path):
    """A zip checkpoint whose pickle calls os.system (never run: refused by name)."""

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": Evil()}, protocol=2))


def fill_inbox(inbox: Path) -> dict[str, tuple[str, str]]:
    """One file of every kind; returns name -> (expected kind, expected architecture)."""
    inbox.mkdir(parents=True, exist_ok=True)
    vae = component("VAE-v1-SD")
    write_sparse_safetensors(inbox / "model.safetensors", SD1, dtype="F16")
    write_sparse_safetensors(inbox / "vae.safetensors", vae, "F32", filled(vae))
    write_sparse_safetensors(inbox / "unet.safetensors", component("UNET-v1-SD"), "F16")
    write_sparse_safetensors(inbox / "clip.safetensors", component("CLIP-v1-SD"), "F16")
    write_sparse_safetensors(inbox / "cn.safetensors", component("ControlNet-v1-SD"), "F16")
    write_lora_ckpt(inbox / "lora.ckpt")
    torch.save({"string_to_param": {"*": torch.randn(3, 768)}, "name": "x"}, inbox / "ti.pt")
    save_file(
        {"clip_g": torch.randn(2, 1280), "clip_l": torch.randn(2, 768)}, inbox / "xl.safetensors"
    )
    return {
        "model.safetensors": ("checkpoint", "SD-v1"),
        "vae.safetensors": ("vae", "VAE-v1"),
        "unet.safetensors": ("unet", "UNET-v1"),
        "clip.safetensors": ("text_encoder", "CLIP-v1"),
        "cn.safetensors": ("controlnet", "ControlNet-v1"),
        "lora.ckpt": ("lora", "LoRA-v1"),
        "ti.pt": ("embedding", "Embedding-v1"),
        "xl.safetensors": ("embedding", "Embedding-XL"),
    }


A1111_DEST = {
    "checkpoint": "models/Stable-diffusion",
    "vae": "models/VAE",
    "unet": "models/Components",
    "text_encoder": "models/Components",
    "controlnet": "models/ControlNet",
    "lora": "models/Lora",
    "embedding": "embeddings",
}
COMFY_DEST = {
    "checkpoint": "models/checkpoints",
    "vae": "models/vae",
    "unet": "models/unet",  # an older tree: the existing unet/ is used, not diffusion_models/
    "text_encoder": "models/text_encoders",
    "controlnet": "models/controlnet",
    "lora": "models/loras",
    "embedding": "models/embeddings",
}


@pytest.mark.parametrize(
    ("layout", "first_folder", "inbox_name", "dest"),
    [
        ("a1111", "Stable-diffusion", "Autoprune", A1111_DEST),
        ("comfyui", "checkpoints", "autoprune", COMFY_DEST),
    ],
)
def test_every_kind_is_filed_into_its_folder(tmp_path, layout, first_folder, inbox_name, dest):
    models = tmp_path / "models"
    (models / first_folder).mkdir(parents=True)
    if layout == "comfyui":
        (models / "unet").mkdir()
    expected = fill_inbox(models / inbox_name)
    originals = {p.name: p.stat().st_size for p in (models / inbox_name).iterdir()}
    result = mtk("autoprune", models, "--settle", "0", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["layout"] == layout
    by_file = {item["file"]: item for item in summary["files"]}
    assert set(by_file) == set(expected)
    for name, (kind, arch) in expected.items():
        item = by_file[name]
        stem = name.rsplit(".", 1)[0]
        target = tmp_path / dest[kind] / f"{stem}.safetensors"
        assert (item["status"], item["kind"], item["architecture"]) == ("filed", kind, arch)
        assert item["destination"] == str(target)
        assert target.is_file()
        assert item["output_bytes"] == target.stat().st_size
        assert item["saved_bytes"] == originals[name] - target.stat().st_size
    assert [p.name for p in (models / inbox_name).iterdir() if not p.name.startswith(".")] == []
    assert summary["saved_bytes"] == sum(i["saved_bytes"] for i in summary["files"])


def test_values_pruned_or_kept_exactly(tmp_path):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    inbox = models / "Autoprune"
    inbox.mkdir()
    vae = component("VAE-v1-SD")
    write_sparse_safetensors(inbox / "vae.safetensors", vae, "F32", filled(vae, every=3))
    with safe_open(inbox / "vae.safetensors", "pt") as handle:
        vae_in = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    lora_in = write_lora_ckpt(inbox / "lora.ckpt")
    ti_in = torch.randn(5, 768)
    torch.save({"string_to_param": {"*": ti_in}}, inbox / "ti.pt")
    outcomes = Autopruner(make_layout(models), Options(settle_seconds=0)).run_once()
    assert [o.status for o in outcomes] == ["filed"] * 3
    vae_out = load_file(models / "VAE" / "vae.safetensors")
    assert set(vae_out) == set(vae_in)
    for name, tensor in vae_in.items():  # fp32 -> fp16, as torch casts
        assert as_bytes(vae_out[name]) == as_bytes(tensor.half()), name
    lora_out = load_file(models / "Lora" / "lora.safetensors")
    assert set(lora_out) == set(lora_in)
    for name, tensor in lora_in.items():  # a LoRA keeps its fp32 values
        assert as_bytes(lora_out[name]) == as_bytes(tensor), name
    ti_out = load_file(tmp_path / "embeddings" / "ti.safetensors")
    assert as_bytes(ti_out["string_to_param.*"]) == as_bytes(ti_in)


def test_conflicts_get_numbered_names(tmp_path):
    models = tmp_path / "models"
    (models / "VAE").mkdir(parents=True)
    (models / "Stable-diffusion").mkdir()
    (models / "VAE" / "vae.safetensors").write_bytes(b"someone else's file")
    inbox = models / "Autoprune"
    inbox.mkdir()
    vae = component("VAE-v1-SD")
    write_sparse_safetensors(inbox / "vae.safetensors", vae, "F16")
    write_sparse_safetensors(inbox / "vae.ckpt", vae, "F16")  # same stem, other extension
    Autopruner(make_layout(models), Options(settle_seconds=0)).run_once()
    assert (models / "VAE" / "vae.safetensors").read_bytes() == b"someone else's file"
    names = sorted(p.name for p in (models / "VAE").iterdir())
    assert names == ["vae(1).safetensors", "vae(2).safetensors", "vae.safetensors"]


def test_bad_files_go_to_failed_with_the_reason(tmp_path):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    inbox = models / "Autoprune"
    inbox.mkdir()
    write_unsafe_ckpt(inbox / "evil.ckpt")
    (inbox / "garbage.safetensors").write_bytes(b"\x00" * 100)
    save_file({"something.else": torch.zeros(3)}, inbox / "unknown.safetensors")
    unet_only = with_prefix(component("UNET-v1-SD"), "model.diffusion_model.")
    write_sparse_safetensors(inbox / "broken.safetensors", unet_only, "F16")
    (inbox / "notes.txt").write_text("not a model")
    outcomes = Autopruner(make_layout(models), Options(settle_seconds=0)).run_once()
    assert {o.file: o.status for o in outcomes} == dict.fromkeys(
        ["broken.safetensors", "evil.ckpt", "garbage.safetensors", "unknown.safetensors"], "failed"
    )
    failed = inbox / "Failed"
    reasons = {
        "evil.ckpt": "it calls posix.system",
        "garbage.safetensors": "garbage.safetensors",
        "unknown.safetensors": "model type could not be identified",
        "broken.safetensors": "partial model (UNET-v1-BROKEN): it has only UNET-v1",
    }
    for name, reason in reasons.items():
        assert (failed / name).is_file()
        assert reason in (failed / f"{name}.txt").read_text()
    assert "something.else [3]" in (failed / "unknown.safetensors.txt").read_text()
    assert (inbox / "notes.txt").read_text() == "not a model"  # not a model file: left alone
    assert list((models / "Stable-diffusion").iterdir()) == []


def tree(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_dry_run_changes_nothing(tmp_path):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    inbox = models / "Autoprune"
    inbox.mkdir()
    write_sparse_safetensors(inbox / "model.safetensors", SD1, dtype="F32")
    (inbox / "bad.ckpt").write_bytes(b"nope")
    before = tree(tmp_path)
    result = mtk("autoprune", models, "--settle", "0", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path) == before
    files = {item["file"]: item for item in json.loads(result.stdout)["files"]}
    assert files["model.safetensors"]["destination"] == str(
        models / "Stable-diffusion" / "model.safetensors"
    )
    fp16_size = files["model.safetensors"]["output_bytes"]
    assert 2.0e9 < fp16_size < 2.2e9  # SD-v1 at fp16
    assert files["bad.ckpt"]["status"] == "failed"


def test_text_summary_and_layout_errors(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    result = mtk("autoprune", models)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: cannot tell the layout of {models}: it has neither a Stable-diffusion/ "
        "nor a checkpoints/ folder; use --layout"
    )
    inbox = models / "Autoprune"
    inbox.mkdir()
    vae = component("VAE-v1-SD")
    write_sparse_safetensors(inbox / "vae.safetensors", vae, "F32")
    result = mtk("autoprune", models, "--layout", "a1111", "--settle", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{inbox.resolve()} (a1111 layout)"
    assert (
        lines[1]
        == f"vae.safetensors: VAE-v1 vae -> {models / 'VAE' / 'vae.safetensors'}, saved 159.56 MiB"
    )
    assert lines[2] == "1 filed, 0 failed, 0 left in the inbox; saved 159.56 MiB"


def test_a_file_still_being_written_is_left_alone(tmp_path):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    inbox = models / "Autoprune"
    inbox.mkdir()
    write_sparse_safetensors(inbox / "vae.safetensors", component("VAE-v1-SD"), "F16")
    outcomes = Autopruner(make_layout(models), Options(settle_seconds=60)).run_once()
    assert [(o.status, o.reason) for o in outcomes] == [("waiting", "still being written")]
    assert (inbox / "vae.safetensors").exists()


def test_only_one_autoprune_per_inbox(tmp_path):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    pruner = Autopruner(make_layout(models), Options(settle_seconds=0))
    from model_toolkit.autoprune.job import inbox_lock

    with inbox_lock(pruner.layout.inbox), pytest.raises(UsageError, match="already working"):
        pruner.run_once()


# -- crash safety -------------------------------------------------------------------------
# Paths below are relative to the folder that holds models/ (and embeddings/, in this layout).

INBOX = "models/Autoprune"


def crash_inbox(root: Path) -> dict[str, str]:
    """Real-sized files: two VAEs to prune, a LoRA to convert, a bad file. -> destinations."""
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    inbox = root / INBOX
    inbox.mkdir()
    vae = component("VAE-v1-SD")
    write_sparse_safetensors(inbox / "a-vae.safetensors", vae, "F32", filled(vae, 4, seed=1))
    write_sparse_safetensors(inbox / "b-vae.safetensors", vae, "F32", filled(vae, 4, seed=2))
    write_lora_ckpt(inbox / "c-lora.ckpt")
    (inbox / "d-bad.ckpt").write_bytes(b"not a checkpoint")
    return {
        "a-vae.safetensors": "models/VAE/a-vae.safetensors",
        "b-vae.safetensors": "models/VAE/b-vae.safetensors",
        "c-lora.ckpt": "models/Lora/c-lora.safetensors",
        "d-bad.ckpt": f"{INBOX}/Failed/d-bad.ckpt",
    }


def small_inbox(root: Path) -> dict[str, str]:
    """The same four outcomes from small files, quick to redo fifty times."""
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    inbox = root / INBOX
    inbox.mkdir()
    save_file({"emb_params": torch.ones(2, 768)}, inbox / "a-ti.safetensors")
    save_file({"clip_l": torch.ones(1, 768), "clip_g": torch.ones(1, 1280)}, inbox / "b-ti.pt")
    write_lora_ckpt(inbox / "c-lora.ckpt")
    (inbox / "d-bad.ckpt").write_bytes(b"not a checkpoint")
    return {
        "a-ti.safetensors": "embeddings/a-ti.safetensors",
        "b-ti.pt": "embeddings/b-ti.safetensors",
        "c-lora.ckpt": "models/Lora/c-lora.safetensors",
        "d-bad.ckpt": f"{INBOX}/Failed/d-bad.ckpt",
    }


def filed_files(root: Path) -> list[str]:
    """Every visible model file outside the inbox."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and not str(p.relative_to(root)).startswith(INBOX)
    )


def check_invariants(root, destinations, inputs, expected, when):
    """Each input is in the inbox, unchanged, or its complete output is in place (or both);
    no other file sits under a final name in a model folder."""
    for name, dest in destinations.items():
        source, output = root / INBOX / name, root / dest
        assert source.exists() or output.exists(), (when, name)
        if source.exists():
            assert source.read_bytes() == inputs[name], (when, name)
        if output.exists():
            assert output.read_bytes() == expected[name], (when, name)
    assert set(filed_files(root)) <= set(destinations.values()), when


def check_finished(root, destinations, expected, when):
    """After a complete run: each file filed once, no input and no temporary file left."""
    for name, dest in destinations.items():
        assert not (root / INBOX / name).exists(), (when, name)
        assert (root / dest).read_bytes() == expected[name], (when, name)
    leftovers = [p.name for p in root.rglob(".*") if p.name != ".mtk-autoprune.lock"]
    assert leftovers == [], when
    assert filed_files(root) == sorted(d for d in destinations.values() if INBOX not in d)


def reference_run(root: Path, make_inbox):
    destinations = make_inbox(root)
    inputs = {p.name: p.read_bytes() for p in (root / INBOX).iterdir()}
    start = time.monotonic()
    assert mtk("autoprune", root / "models", "--settle", "0").returncode == 0
    duration = time.monotonic() - start
    expected = {name: (root / dest).read_bytes() for name, dest in destinations.items()}
    return inputs, expected, duration


FS_STEPS = ("link", "rename", "replace", "unlink", "fsync", "mkdir")


def run_killed_at_step(models: Path, step: int) -> bool:
    """Run autoprune in a forked child that SIGKILLs itself just before its `step`-th change to
    the filesystem (link, rename, unlink, fsync, ...). False when the run ended before it."""
    pid = os.fork()
    if pid == 0:  # the child: count the steps, die at the chosen one
        try:
            calls = [0]

            def counted(original):
                def step_then(*args, **kwargs):
                    calls[0] += 1
                    if calls[0] == step:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return original(*args, **kwargs)

                return step_then

            for name in FS_STEPS:
                setattr(os, name, counted(getattr(os, name)))
            Autopruner(make_layout(models), Options(settle_seconds=0)).run_once()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


@pytest.mark.slow
def test_killed_before_every_filesystem_step_nothing_is_lost(tmp_path):
    """Deterministic: a crash before each single step of a run, every step in turn."""
    inputs, expected, _ = reference_run(tmp_path / "reference", small_inbox)
    step = 1
    while True:
        root = tmp_path / f"step{step}"
        destinations = small_inbox(root)
        if not run_killed_at_step(root / "models", step):
            break
        check_invariants(root, destinations, inputs, expected, step)
        Autopruner(make_layout(root / "models"), Options(settle_seconds=0)).run_once()
        check_finished(root, destinations, expected, step)
        step += 1
    assert step > 30  # each file's steps were crash points


@pytest.mark.slow
def test_killed_at_any_moment_nothing_is_lost(tmp_path):
    """Real `mtk` processes, SIGKILLed at moments spread over a run on real-sized files."""
    inputs, expected, duration = reference_run(tmp_path / "reference", crash_inbox)
    points = 4
    for number in range(points):
        root = tmp_path / f"run{number}"
        destinations = crash_inbox(root)
        process = subprocess.Popen(
            [sys.executable, "-m", "model_toolkit", "autoprune", root / "models", "--settle", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(duration * (number + 0.5) / points)
        process.send_signal(signal.SIGKILL)
        process.wait()
        check_invariants(root, destinations, inputs, expected, number)
        assert mtk("autoprune", root / "models", "--settle", "0").returncode == 0
        check_finished(root, destinations, expected, number)


# -- watching -----------------------------------------------------------------------------


def test_watch_takes_a_slowly_arriving_file_only_when_complete(tmp_path):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    inbox = models / "Autoprune"
    inbox.mkdir()
    vae = component("VAE-v1-SD")
    complete = write_sparse_safetensors(tmp_path / "vae.safetensors", vae, "F16", filled(vae))
    data = complete.read_bytes()
    process = subprocess.Popen(
        [sys.executable, "-m", "model_toolkit", "autoprune", models, "--watch", "--settle", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        with open(inbox / "vae.safetensors", "wb") as handle:  # a download: pieces, pauses
            pieces = 8
            for index in range(pieces):
                handle.write(data[index * len(data) // pieces : (index + 1) * len(data) // pieces])
                handle.flush()
                time.sleep(0.4)
        target = models / "VAE" / "vae.safetensors"
        deadline = time.monotonic() + 60
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert target.exists()
        assert not (inbox / "Failed").exists()  # a half-written file was never taken
        with safe_open(target, "np") as handle:
            assert handle.keys() == sorted(name for name, _ in vae)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"vae.safetensors: VAE-v1 vae -> {target}" in out


def test_watch_by_polling_stops_cleanly(tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    pruner = Autopruner(make_layout(models), Options(settle_seconds=0))
    seen, stop = [], threading.Event()
    thread = threading.Thread(
        target=watch, args=(pruner, stop, seen.append, 0.1), kwargs={"use_events": False}
    )
    thread.start()
    try:
        time.sleep(0.3)
        save_file({"emb_params": torch.randn(2, 768)}, models / "autoprune" / "ti.safetensors")
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert [(o.file, o.status, o.kind) for o in seen] == [("ti.safetensors", "filed", "embedding")]
    assert (models / "embeddings" / "ti.safetensors").is_file()


# -- hostile inboxes ----------------------------------------------------------------------


def planted_marker(inbox: Path, name: str, record: dict, sign: bool) -> Path:
    from model_toolkit.autoprune.job import MARKER_SUFFIX, marker_mac

    body = json.dumps(record)
    signed = {"record": body, "mac": marker_mac(body) if sign else "0" * 64}
    marker = inbox / f".{name}{MARKER_SUFFIX}"
    marker.write_text(json.dumps(signed))
    return marker


def victim_record(victim: Path, name: str, output: Path) -> dict:
    stat = victim.stat()
    return {
        "input": name,
        "input_identity": [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns],
        "output": str(output),
        "metadata": {},
        "tensors": {},
    }


def test_a_planted_marker_deletes_nothing(tmp_path):
    """The marker names a file outside the inbox, with its true size and mtime."""
    models = tmp_path / "models"
    checkpoints = models / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    inbox = models / "Autoprune"
    inbox.mkdir()
    victim = checkpoints / "victim.safetensors"
    write_sparse_safetensors(victim, component("VAE-v1-SD"), "F16")
    output = models / "VAE" / "x.safetensors"
    output.parent.mkdir()
    output.write_bytes(victim.read_bytes())
    name = "../Stable-diffusion/victim.safetensors"
    # Unsigned (what anyone who can write into the inbox can make):
    planted_marker(inbox, "victim.safetensors", victim_record(victim, name, output), sign=False)
    outcomes = Autopruner(make_layout(models), Options(settle_seconds=0)).run_once()
    assert victim.exists()
    assert [(o.status, "not written by autoprune" in o.reason) for o in outcomes] == [
        ("ignored", True)
    ]
    # Even signed, a marker is acted on only for a move we would make:
    (inbox / ".victim.safetensors.mtk-autoprune.json").unlink()
    planted_marker(inbox, "victim.safetensors", victim_record(victim, name, output), sign=True)
    outcomes = Autopruner(make_layout(models), Options(settle_seconds=0)).run_once()
    assert victim.exists()
    assert [o.reason for o in outcomes] == [
        "its input is not the file it is named after; left alone"
    ]
    (inbox / ".victim.safetensors.mtk-autoprune.json").unlink()
    inside = inbox / "same.safetensors"
    inside.write_bytes(victim.read_bytes())
    planted_marker(
        inbox, "same.safetensors", victim_record(inside, "same.safetensors", inside), True
    )
    layout = make_layout(models, folders={"checkpoint": inbox})
    outcomes = Autopruner(layout, Options(settle_seconds=0)).recover()
    assert inside.exists()
    assert [o.reason for o in outcomes] == ["its output is its input; left alone"]


def test_a_file_renamed_over_the_input_meanwhile_is_kept(tmp_path, monkeypatch):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    inbox = models / "Autoprune"
    inbox.mkdir()
    vae = component("VAE-v1-SD")
    path = inbox / "vae.safetensors"
    write_sparse_safetensors(path, vae, "F32")
    newer = tmp_path / "newer.safetensors"
    write_sparse_safetensors(newer, vae, "F32", filled(vae, every=7))
    expected = newer.read_bytes()
    pruner = Autopruner(make_layout(models), Options(settle_seconds=0))
    plan_for = pruner.plan_for

    def renamed_meanwhile(model, name):
        os.replace(newer, path)  # a download finishing under the same name
        return plan_for(model, name)

    monkeypatch.setattr(pruner, "plan_for", renamed_meanwhile)
    (outcome,) = pruner.run_once()
    assert outcome.status == "filed" and "replaced meanwhile" in outcome.reason
    assert path.read_bytes() == expected


def test_the_lock_does_not_follow_a_symlink(tmp_path):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    inbox = models / "Autoprune"
    inbox.mkdir()
    outside = tmp_path / "elsewhere" / "created-by-lock"
    outside.parent.mkdir()
    (inbox / ".mtk-autoprune.lock").symlink_to(outside)
    with pytest.raises(UsageError, match="cannot use the lock"):
        Autopruner(make_layout(models), Options(settle_seconds=0)).run_once()
    assert not outside.exists()
