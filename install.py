"""AUTOMATIC1111/Forge extension installer: the webui runs it with its `launch` module.

We are a guest in the webui's environment: this installs only the packages the extension
needs and the webui lacks, and it never changes a package the webui already has. Every pip
call carries a constraints file pinning each installed distribution to the version running
now (numpy 1.26.2 stays numpy 1.26.2), so pip picks versions of ours that fit the host, or
fails. Then each dependency is imported in this very interpreter (in a child process, so that
a broken one cannot break the webui) and whatever does not import is said in one line.

This file must not import model_toolkit, whose dependencies it is installing.
"""

import importlib.metadata
import os
import subprocess
import sys
import tempfile

import launch

# import name -> requirement. Quoted in the pip command: the webui's run_pip goes through the
# shell, where an unquoted `>=` is a redirection (the bound dropped, a file `=0.4` written).
# (numpy and gradio are the webui's own; the extension needs no other package.)
REQUIREMENTS = {
    "ml_dtypes": "ml_dtypes>=0.4",
    "watchdog": "watchdog>=4",
    "blake3": "blake3>=0.4",
    "gguf": "gguf>=0.19",
}
# What each one gives, for the line that says it is missing.
PROVIDES = {
    "ml_dtypes": "no bf16 or fp8 (models in those precisions cannot be read or written)",
    "watchdog": "autoprune polls its folder instead of watching it",
    "blake3": "no BLAKE3 hash",
    "gguf": "no GGUF files (.gguf models cannot be read or written)",
}


def imports(module: str) -> bool:
    """Whether `module` imports in this interpreter: a distribution on disk is not enough
    (ml_dtypes built for numpy 2 is installed, and fails to import, under numpy 1.26)."""
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        timeout=300,
    )
    return result.returncode == 0


def host_constraints(leave_out: set[str]) -> str:
    """`name==version` for every distribution installed here, but those being (re)installed."""
    pins = set()
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if not name or normalized(name) in leave_out:
            continue
        pins.add(f"{name}=={distribution.version}")
    return "\n".join(sorted(pins)) + "\n"


def normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def install(modules: list[str]) -> None:
    leave_out = {normalized(module) for module in modules}
    handle, constraints = tempfile.mkstemp(prefix="model-toolkit-", suffix=".txt")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(host_constraints(leave_out))
        for module in modules:
            if launch.is_installed(module):  # installed but broken: remove it, then install
                launch.run_pip(
                    f'uninstall -y "{module}"', f"Model Toolkit: removing a broken {module}"
                )
            requirement = REQUIREMENTS[module]
            launch.run_pip(
                f'install "{requirement}" --constraint "{constraints}"',
                f"Model Toolkit requirement: {requirement}",
            )
    finally:
        os.unlink(constraints)


def main() -> None:
    missing = [module for module in REQUIREMENTS if not imports(module)]
    if missing:
        try:
            install(missing)
        except Exception as exc:  # a failed pip must not stop the webui from starting
            print(f"Model Toolkit: could not install {', '.join(missing)} ({exc})")
    for module in REQUIREMENTS:
        if not imports(module):
            print(
                f"Model Toolkit: {module} is not available in this webui's environment "
                f"(no version fits its packages); without it: {PROVIDES[module]}."
            )


main()
