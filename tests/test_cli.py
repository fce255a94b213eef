"""The `mtk` command as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import model_toolkit as mtk
from conftest import run_mtk, run_python

IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


mtk_run = run_mtk


def test_version():
    result = mtk_run("--version")
    assert result.returncode == 0
    assert result.stdout == f"mtk {mtk.__version__}\n"


def test_keys_text_and_json(tmp_path):
    path = tmp_path / "m.ckpt"
    torch.save(
        {
            "state_dict": {
                "first_stage_model.w": torch.zeros(2, 3, dtype=torch.float16),
                "ids": torch.arange(4),
            },
            "global_step": 9,
        },
        path,
    )
    text = mtk_run("keys", path)
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["first_stage_model.w", "F16", "[2,3]"]
    assert lines[1].split() == ["ids", "I64", "[4]"]
    assert "2 tensors" in lines[2] and "torch-zip" in lines[2]
    assert "  global_step: 9" in lines
    listing = json.loads(mtk_run("keys", path, "--json").stdout)
    assert listing == [
        {"name": "first_stage_model.w", "dtype": "F16", "shape": [2, 3]},
        {"name": "ids", "dtype": "I64", "shape": [4]},
    ]


def test_demo_then_prune(tmp_path):
    """The README's first command, step by step: a bloated SD-v1, pruned to 2 GiB."""
    demo = mtk_run("demo", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    path = tmp_path / "demo.safetensors"
    assert path.stat().st_size > 7 * 2**30  # a real SD-v1 with EMA in fp32...
    assert path.stat().st_blocks * 512 < 64 * 2**20  # ...that costs a few MB of disk
    with safe_open(path, "pt") as handle:
        names = list(handle.keys())
        assert sum(k.startswith("model_ema.diffusion_model") for k in names) == 686
        ids = handle.get_tensor(IDS)
        assert ids.dtype == torch.float32 and ids[0, 76].item() == pytest.approx(75.99998)
        bias = handle.get_tensor("model.diffusion_model.out.2.bias")
        assert bias.abs().sum() > 0  # small tensors hold random values

    report = json.loads(mtk_run("inspect", path, "--json", "--no-metric").stdout)
    assert report["architecture"] == "SD-v1"
    result = mtk_run("prune", "demo.safetensors", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote demo-pruned.safetensors (1.99 GiB, saved 5.19 GiB)")
    with safe_open(tmp_path / "demo-pruned.safetensors", "pt") as handle:
        assert not any(k.startswith("model_ema.diffusion_model") for k in handle.keys())  # noqa: SIM118
        assert handle.get_tensor(IDS).tolist()[0][76] == 75  # int64, as the original rounds
        assert torch.equal(handle.get_tensor("model.diffusion_model.out.2.bias"), bias.half())
    assert mtk_run("demo", cwd=tmp_path).returncode == 2  # exists: kept


def test_convert_refuses_to_replace_its_input(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(4, 4), "ids": torch.arange(3)}, path)
    result = mtk_run("convert", path, path)
    assert result.returncode == 2
    assert "use --overwrite" in result.stderr
    assert mtk_run("convert", path, path, "--precision", "fp16", "--overwrite").returncode == 0
    assert {n: t.dtype for n, t in load_file(path).items()} == {
        "w": torch.float16,
        "ids": torch.int64,
    }


def test_bad_arguments_exit_2(tmp_path):
    assert mtk_run("convert").returncode == 2
    assert mtk_run("convert", "a", "b", "--precision", "fp9").returncode == 2
    assert mtk_run("nonsense").returncode == 2


def test_identifying_imports_neither_numpy_nor_the_writers(tmp_path):
    """`mtk inspect --no-metric` reads names and shapes only; numpy, the casting code and the
    writers would add ~0.2 s to every start (issue #5: identify within 0.5 s)."""
    source = tmp_path / "m.safetensors"
    save_file({"first_stage_model.decoder.conv_in.weight": torch.zeros(4, 4)}, source)
    script = (
        "import sys\n"
        "from model_toolkit import cli\n"
        "sys.argv = ['mtk', 'inspect', sys.argv[1], '--no-metric']\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "heavy = {'numpy', 'ml_dtypes', 'pydantic', 'model_toolkit.plan', 'model_toolkit.write'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    assert run_python(script, source, timeout=120).strip().splitlines()[-1] == "[]"


def test_mtk_keeps_openblas_to_one_thread_unless_the_user_sets_it():
    """OpenBLAS's idle threads spin on the cores the metric sums on; mtk does no matrix work."""
    import os

    script = (
        "import os, sys\n"
        "from model_toolkit import cli\n"
        "sys.argv = ['mtk', '--help']\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(os.environ.get('OPENBLAS_NUM_THREADS'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    assert run_python(script, env=env).splitlines()[-1] == "1"
    assert run_python(script, env={**env, "OPENBLAS_NUM_THREADS": "3"}).splitlines()[-1] == "3"
