"""A stand-in for the webui's `launch` module, as install.py uses it."""

import os

installed = set(os.environ.get("STANDIN_INSTALLED", "").split(","))
pip_calls: list[str] = []


def is_installed(name):
    return name in installed


def run_pip(command, desc=None):
    pip_calls.append(command)
