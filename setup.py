"""The optional compiled kernels (src/model_toolkit/_kernels.c); everything else is in
pyproject.toml. Without a C compiler the build goes on and the package uses numpy instead."""

import sys

from setuptools import Extension, setup

# No contraction into fused multiply-adds: the kernels reproduce other code's float32 rounding.
FLAGS = (
    []
    if sys.platform == "win32"
    else ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
)

setup(
    ext_modules=[
        Extension(
            "model_toolkit._kernels",
            sources=["src/model_toolkit/_kernels.c"],
            extra_compile_args=FLAGS,
            optional=True,
        )
    ]
)
