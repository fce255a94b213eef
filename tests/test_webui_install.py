"""install.py in the environment of each supported webui, with the real pip.

A fresh virtual environment gets the host's pins (the packages of its requirements_versions.txt
that ours meet: numpy above all); then the real install.py runs, through a `launch` module
whose run_pip passes its command through the shell as the webui's does. Nothing the host had
may change, every dependency must import, and so must the extension and the casts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

# Read from each host's public sources (README, "Supported webuis").
HOSTS = {
    "AUTOMATIC1111 1.10.1": {"numpy": "1.26.2", "safetensors": "0.4.2", "Pillow": "9.5.0"},
    "Forge (lllyasviel, gradio 4.40)": {
        "numpy": "1.26.2",
        "safetensors": "0.4.2",
        "Pillow": "9.5.0",
        "protobuf": "3.20.0",
    },
    "Forge Neo (Haoming02, neo)": {
        "numpy": "1.26.4",
        "safetensors": "0.6.2",
        "Pillow": "11.3.0",
        "protobuf": "4.25.7",
    },
}

# The webui's launch.run_pip, as AUTOMATIC1111 1.10 and Forge write it: one shell command.
LAUNCH = textwrap.dedent(
    """
    import importlib.metadata, subprocess, sys

    def is_installed(package):
        try:
            importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True

    def run_pip(command, desc=None, live=False):
        print(f"Installing {desc}")
        result = subprocess.run(
            f'"{sys.executable}" -m pip {command} --prefer-binary', shell=True
        )
        if result.returncode:
            raise RuntimeError(f"Couldn't install {desc}")
    """
)

CHECK = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy, ml_dtypes
    import model_toolkit.ui.extension  # what the tab's script imports first
    from model_toolkit import casting  # noqa: F401
    from model_toolkit.dtypes import DTYPES
    print(json.dumps({"bf16": str(DTYPES["BF16"].numpy), "fp8": str(DTYPES["F8_E4M3"].numpy)}))
    """
)


def freeze(python: Path) -> dict[str, str]:
    result = subprocess.run(
        [python, "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        item["name"].lower().replace("_", "-"): item["version"]
        for item in json.loads(result.stdout)
    }


@pytest.mark.slow
@pytest.mark.parametrize("host", list(HOSTS))
def test_install_py_keeps_the_host_as_it_was(tmp_path, host):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    pins = [f"{name}=={version}" for name, version in HOSTS[host].items()]
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--prefer-binary", *pins],
        check=True,
        capture_output=True,
    )
    before = freeze(python)
    standin = tmp_path / "webui"
    standin.mkdir()
    (standin / "launch.py").write_text(LAUNCH)
    install = subprocess.run(
        [
            python,
            "-c",
            f"import sys; sys.path.insert(0, {str(standin)!r}); "
            f"import runpy; runpy.run_path({str(ROOT / 'install.py')!r})",
        ],
        cwd=standin,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert "is not available" not in install.stdout, install.stdout
    after = freeze(python)
    changed = {name: (version, after.get(name)) for name, version in before.items()}
    assert {n: v for n, v in changed.items() if v[0] != v[1]} == {}  # nothing the host had
    assert {"ml-dtypes", "watchdog", "blake3", "gguf"} <= set(after)
    assert sorted(p.name for p in standin.iterdir()) == ["launch.py"]  # no `=0.4` files
    check = subprocess.run(
        [python, "-c", CHECK, str(ROOT / "src")], capture_output=True, text=True, timeout=300
    )
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout.splitlines()[-1]) == {"bf16": "bfloat16", "fp8": "float8_e4m3fn"}
    # A second run finds everything and calls pip no more.
    again = subprocess.run(install.args, cwd=standin, capture_output=True, text=True, timeout=600)
    assert "Installing" not in again.stdout, again.stdout
