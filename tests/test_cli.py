"""The `mtk` command as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

import model_toolkit as mtk
from conftest import assert_same_tensors


def mtk_run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "model_toolkit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


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


def test_demo_then_convert_to_fp16_safetensors(tmp_path):
    """The README's first command, step by step."""
    demo = mtk_run("demo", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "demo.ckpt").exists()
    original = torch.load(tmp_path / "demo.ckpt", weights_only=True)
    assert original["global_step"] == 470000
    state = original["state_dict"]
    assert sum(k.startswith("model_ema.") for k in state) == 688
    assert (
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype
        == torch.float32
    )

    result = mtk_run(
        "convert", "demo.ckpt", "demo.safetensors", "--precision", "fp16", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote demo.safetensors")
    converted = load_file(tmp_path / "demo.safetensors")
    expected = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    assert_same_tensors(converted, expected)
    assert mtk_run("demo", cwd=tmp_path).returncode == 2  # exists: kept


def test_convert_refuses_to_replace_its_input(tmp_path):
    path = tmp_path / "m.safetensors"
    mtk_run("demo", path)
    result = mtk_run("convert", path, path)
    assert result.returncode == 2
    assert "use --overwrite" in result.stderr
    assert mtk_run("convert", path, path, "--precision", "fp16", "--overwrite").returncode == 0
    assert all(t.dtype in (torch.float16, torch.int32) for t in load_file(path).values())


def test_bad_arguments_exit_2(tmp_path):
    assert mtk_run("convert").returncode == 2
    assert mtk_run("convert", "a", "b", "--precision", "fp9").returncode == 2
    assert mtk_run("nonsense").returncode == 2
