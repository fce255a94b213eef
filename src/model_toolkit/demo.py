"""The built-in demo model: a small checkpoint laid out like a bloated SD-v1 `.ckpt` download.

Real key names in the real order (UNET, EMA copy of the UNET, VAE, CLIP, scheduler buffers,
float-stored CLIP position ids, Lightning's top-level entries), fp32 throughout, so that every
command has something realistic to work on without a download. Large dimensions are divided by
16 to keep the file small (about 30 MB), so its shapes are not those of a real SD-v1.
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

SCALE = 16
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


def _small(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d // SCALE if d >= 256 else d for d in shape)


def _scheduler(rng: np.random.Generator) -> dict[str, np.ndarray]:
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
    """The demo checkpoint as a plan of in-memory tensors (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    f32, i64 = DTYPES["F32"], DTYPES["I64"]
    entries: list[PlanEntry] = []

    def add(name: str, values: np.ndarray) -> None:
        dtype = (
            f32
            if values.dtype == np.float32
            else DTYPES["I32"]
            if values.dtype == np.int32
            else i64
        )
        entries.append(PlanEntry(name, TensorRef.from_array(name, values, dtype), dtype))

    def weights(shape: tuple[int, ...]) -> np.ndarray:
        return (rng.standard_normal(_small(shape), dtype=np.float32) * 0.02).astype(np.float32)

    for name, values in _scheduler(rng).items():
        add(name, values)
    unet = keylists.load("UNET-v1-SD")
    for key, shape in unet:
        add(f"model.diffusion_model.{key}", weights(shape))
    add("model_ema.decay", np.array(0.9999, dtype=np.float32))
    add("model_ema.num_updates", np.array(470000, dtype=np.int32))
    for key, shape in keylists.load("UNET-v1-EMA"):
        add(f"model_ema.diffusion_model{key}", weights(shape))
    for key, shape in keylists.load("VAE-v1-SD"):
        add(f"first_stage_model.{key}", weights(shape))
    for key, shape in keylists.load("CLIP-v1-SD"):
        name = f"cond_stage_model.transformer.text_model.{key}"
        if key == "embeddings.position_ids":
            # Stored as float, as many merges do, and slightly off: a "broken" position ids tensor.
            ids = np.arange(77, dtype=np.float32).reshape(shape)
            ids[0, 76] = 75.99998
            add(name, ids)
        else:
            add(name, weights(shape))
    metadata = {"epoch": 6, "global_step": 470000, "pytorch-lightning_version": "1.4.2"}
    return Plan(entries, metadata)


def write_demo(output: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write the demo checkpoint (format from the extension, `.ckpt` by convention)."""
    return write_plan(demo_plan(), output, overwrite=overwrite)
