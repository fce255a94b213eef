"""The built-in demo model: a bloated SD-v1 download, as real as can be without weights.

Real key names and shapes in the order LDM saves them: scheduler buffers, UNET, its EMA copy,
VAE, CLIP (with float-stored, slightly broken position ids), plus junk a training script left
behind, all in fp32: 7.2 GiB as `ls` shows it. The weights are zeros except a few small tensors
of random values, and zeros are written as holes, so as `.safetensors` the file takes a few MB of
disk. Every command works on it as on a real download: `mtk inspect` identifies SD-v1, `mtk prune`
brings it to 2 GiB (sparse as well).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .architectures import keylists
from .dtypes import DTYPES
from .model import TensorRef
from .plan import Plan, PlanEntry
from .write import write_plan

SCHEDULER_BUFFERS = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
]
RANDOM_BELOW = 4096  # tensors with fewer elements get random values (biases, norms)


def _scheduler() -> dict[str, np.ndarray]:
    """The buffers LDM saves, computed from SD-v1's schedule (scaled linear, 1000 steps)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas = np.cumprod(1.0 - betas)
    previous = np.append(1.0, alphas[:-1])
    variance = betas * (1.0 - previous) / (1.0 - alphas)
    values = {
        "betas": betas,
        "alphas_cumprod": alphas,
        "alphas_cumprod_prev": previous,
        "sqrt_alphas_cumprod": np.sqrt(alphas),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - alphas),
        "log_one_minus_alphas_cumprod": np.log(1 - alphas),
        "sqrt_recip_alphas_cumprod": np.sqrt(1 / alphas),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / alphas - 1),
        "posterior_variance": variance,
        "posterior_log_variance_clipped": np.log(np.maximum(variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(previous) / (1 - alphas),
        "posterior_mean_coef2": (1 - previous) * np.sqrt(1 - betas) / (1 - alphas),
    }
    return {name: values[name].astype(np.float32) for name in SCHEDULER_BUFFERS}


def demo_plan(seed: int = 1234) -> Plan:
    """The demo checkpoint as a plan (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    f32 = DTYPES["F32"]
    entries: list[PlanEntry] = []

    def add_values(name: str, values: np.ndarray) -> None:
        dtype = {np.dtype(np.int32): DTYPES["I32"], np.dtype(np.int64): DTYPES["I64"]}.get(
            values.dtype, f32
        )
        entries.append(PlanEntry(name, TensorRef.from_array(name, values, dtype), dtype))

    def add(name: str, shape: tuple[int, ...]) -> None:
        if int(np.prod(shape)) < RANDOM_BELOW:
            add_values(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
        else:
            entries.append(PlanEntry(name, TensorRef.zeros(name, shape, f32), f32))

    for name, values in _scheduler().items():
        add_values(name, values)
    for key, shape in keylists.load("UNET-v1-SD"):
        add(f"model.diffusion_model.{key}", shape)
    add_values("model_ema.decay", np.array(0.9999, dtype=np.float32))
    add_values("model_ema.num_updates", np.array(470000, dtype=np.int32))
    for key, shape in keylists.load("UNET-v1-EMA"):
        add(f"model_ema.diffusion_model{key}", shape)
    for key, shape in keylists.load("VAE-v1-SD"):
        add(f"first_stage_model.{key}", shape)
    for key, shape in keylists.load("CLIP-v1-SD"):
        name = f"cond_stage_model.transformer.text_model.{key}"
        if key == "embeddings.position_ids":
            # Stored as float, as many merges do, and slightly off: broken position ids.
            ids = np.arange(77, dtype=np.float32).reshape(shape)
            ids[0, 76] = 75.99998
            add_values(name, ids)
        else:
            add(name, shape)
    # Junk a training script leaves behind: the VAE's discriminator.
    for index in range(4):
        add(f"first_stage_model.loss.discriminator.main.{index}.weight", (64, 64, 4, 4))
    metadata = {"epoch": "6", "global_step": "470000", "pytorch-lightning_version": "1.4.2"}
    return Plan(entries, metadata, "demo.safetensors")


def write_demo(output: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write the demo model; `.safetensors` (the default) stores its zeros as holes."""
    return write_plan(demo_plan(), output, overwrite=overwrite)
