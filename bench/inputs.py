"""Builds the benchmark's input files (called by bench/run.py; run in its own process).

    python bench/inputs.py --full|--quick KEY=PATH ...
        (KEY: sd1_ckpt, sd1_st, sdxl_st, sdxl_b, sdxl_lora, wan_st, wan_aio)
    python bench/inputs.py --metric-bytes PATH           (what the metric reads of a file)
    python bench/inputs.py --metric-pass PATH            (seconds of the metric's pass alone)

Real key names and shapes (the lists kept in tests/data/keys and the package's component data),
random values: every tensor's bytes are a window of a 256 MiB file of normally distributed
values, so the inputs are real bytes on disk (not sparse) and are written by our own streaming
writer without holding a model in memory. `--quick` builds small inputs: a VAE-only SD-v1, and
an SDXL with large dimensions divided by 16. One input is only read for its header (`wan_aio`,
a Wan 2.1 14B all-in-one file with its UMT5-XXL and VAE, 2,400+ tensors): its data is a hole
(a sparse file), as identifying never reads it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from model_toolkit.architectures import keylists
from model_toolkit.demo import SCHEDULER_BUFFERS
from model_toolkit.dtypes import DTYPES, DType
from model_toolkit.model import TensorRef
from model_toolkit.plan import Plan, PlanEntry
from model_toolkit.storage import FileData, FileSpan
from model_toolkit.write import write_plan

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
KEYS = ROOT / "tests" / "data" / "keys"
PATTERN_BYTES = 256 * 1024 * 1024


def pattern(dtype: DType) -> FileData:
    path = CACHE / f"pattern-{dtype.name}.bin"
    if not path.exists():
        rng = np.random.default_rng(0)
        values = rng.standard_normal(PATTERN_BYTES // dtype.itemsize, dtype=np.float32) * 0.02
        temp = path.with_suffix(".tmp")
        values.astype(dtype.numpy).tofile(temp)
        temp.rename(path)
    return FileData(path)


class Builder:
    def __init__(self, scale: int) -> None:
        self.scale = scale
        self.entries: list[PlanEntry] = []
        self.patterns: dict[str, FileData] = {}
        self.position = 0

    def add(self, name: str, shape: tuple[int, ...], dtype: DType) -> None:
        shape = tuple(d // self.scale if d >= 256 else d for d in shape)
        if dtype.name not in self.patterns:
            self.patterns[dtype.name] = pattern(dtype)
        data = self.patterns[dtype.name]
        count = int(np.prod(shape))
        nbytes = count * dtype.itemsize
        # Windows at varied offsets, so that no two tensors are byte-identical.
        self.position = (self.position + 7919 * dtype.itemsize) % (PATTERN_BYTES - nbytes)
        offset = self.position - self.position % dtype.itemsize
        if "position_ids" in name:
            ids = np.arange(count, dtype=np.int64).reshape(shape)
            ref = TensorRef.from_array(name, ids, DTYPES["I64"])
        elif name.endswith(".alpha"):  # a LoRA's alpha: half its rank, as trainers default
            ref = TensorRef.from_array(name, np.array(16, dtype.numpy), dtype)
        else:
            ref = TensorRef(name, dtype, shape, FileSpan(data, offset, nbytes))
        self.entries.append(PlanEntry(name, ref, ref.dtype))


def sd1_plan(scale: int) -> Plan:
    """SD1 fp32 as a training checkpoint: buffers, UNET, EMA, VAE, CLIP, and some junk.

    Quick inputs keep real shapes (identification needs them) but only the VAE's keys: a partial
    SD-v1 of 320 MiB that every command handles.
    """
    f32 = DTYPES["F32"]
    build = Builder(1)
    for name in SCHEDULER_BUFFERS:
        build.add(name, (1000,), f32)
    for name, shape in keylists.load_path(KEYS / "Checkpoint-SD1-LDM.txt"):
        if scale == 1 or name.startswith("first_stage_model."):
            build.add(name, shape, f32)
    if scale == 1:
        build.add("model_ema.decay", (), f32)
        for name, shape in keylists.load("UNET-v1-EMA"):
            build.add(f"model_ema.diffusion_model{name}", shape, f32)
    for index in range(4):  # junk left by training scripts
        build.add(f"first_stage_model.loss.discriminator.main.{index}.weight", (64, 64, 4, 4), f32)
    return Plan(build.entries, {"global_step": 470000, "epoch": 6})


def sdxl_plan(scale: int) -> Plan:
    build = Builder(scale)
    for name, shape in keylists.load_path(KEYS / "Checkpoint-SDXL-SGM.txt"):
        build.add(name, shape, DTYPES["F16"])
    return Plan(build.entries, _named_for_gguf(scale, "sdxl"))


def sdxl_b_plan(scale: int) -> Plan:
    """A second SDXL (a merge's B): the same names, other bytes (its windows start elsewhere)."""
    build = Builder(scale)
    build.position = PATTERN_BYTES // 3
    for name, shape in keylists.load_path(KEYS / "Checkpoint-SDXL-SGM.txt"):
        build.add(name, shape, DTYPES["F16"])
    return Plan(build.entries, _named_for_gguf(scale, "sdxl"))


def sdxl_lora_plan(scale: int) -> Plan:
    """A rank-32 kohya SDXL LoRA: UNET and both text encoders, sd-scripts' names (the real key
    lists of tests/data/keys/lora, the rank made 32)."""
    build = Builder(scale)
    for part in ("UNET", "TE1", "TE2"):
        for name, shape in keylists.load_path(KEYS / "lora" / f"LoRA-kohya-SDXL-{part}.txt"):
            build.add(name, tuple(32 if d == -1 else d for d in shape), DTYPES["F16"])
    return Plan(build.entries, {"ss_network_dim": "32", "ss_network_alpha": "16"})


def wan_plan(scale: int) -> Plan:
    """A Wan 2.1 T2V 1.3B transformer in bf16, as ComfyUI's diffusion_models/ has it."""
    build = Builder(scale)
    for name, shape in keylists.load("Wan-v2.1-T2V-1.3B"):
        build.add(name, shape, DTYPES["BF16"])
    return Plan(build.entries, _named_for_gguf(scale, "wan"))


def _named_for_gguf(scale: int, arch: str) -> dict[str, str]:
    """Quick inputs have divided shapes, which no registry list matches: they say their GGUF
    architecture in their metadata, where a GGUF written from them takes it."""
    return {"general.architecture": arch} if scale != 1 else {}


def metric_bytes(path: str) -> int:
    """How many bytes of the file the metric reads: the floor of the metric case."""
    from model_toolkit.analysis import analyze
    from model_toolkit.formats import open_model
    from model_toolkit.metric import metric_tensors

    with open_model(path) as model:
        return sum(ref.nbytes for _, ref in metric_tensors(analyze(model)))


def metric_pass_seconds(path: str) -> float:
    """The metric's own time in a process that has started, imported numpy and identified the
    file already: its tables and its pass over the weights (on all cores), nothing else."""
    import time

    from model_toolkit.analysis import analyze
    from model_toolkit.formats import open_model
    from model_toolkit.metric import compute_metric

    with open_model(path) as model:
        analysis = analyze(model)
        start = time.perf_counter()
        compute_metric(analysis)
        return time.perf_counter() - start


WAN_AIO = [
    ("model.diffusion_model.", "Wan-v2.1-T2V-14B"),
    ("text_encoders.umt5xxl.transformer.", "UMT5-XXL"),
    ("vae.", "VAE-Wan2.1"),
]


def write_header_only(path: str, parts: list[tuple[str, str]]) -> None:
    """A bf16 .safetensors with the parts' real names and shapes and no data written: the
    header, then a hole as long as the tensors (what identification is measured on)."""
    import json

    header: dict[str, dict] = {}
    offset = 0
    for prefix, name in parts:
        for key, shape in keylists.load(name):
            nbytes = int(np.prod(shape)) * 2
            header[prefix + key] = {
                "dtype": "BF16",
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    temp = Path(path).with_suffix(".tmp")
    with open(temp, "wb") as file:
        file.write(len(raw).to_bytes(8, "little") + raw)
        file.truncate(8 + len(raw) + offset)
    temp.rename(path)


def main() -> None:
    mode, *targets = sys.argv[1:]
    if mode == "--metric-bytes":
        print(metric_bytes(targets[0]))
        return
    if mode == "--metric-pass":
        print(metric_pass_seconds(targets[0]))
        return
    scale = 16 if mode == "--quick" else 1
    CACHE.mkdir(parents=True, exist_ok=True)
    plans = {
        "sd1_ckpt": sd1_plan,
        "sd1_st": sd1_plan,
        "sdxl_st": sdxl_plan,
        "sdxl_b": sdxl_b_plan,
        "sdxl_lora": sdxl_lora_plan,
        "wan_st": wan_plan,
    }
    for target in targets:
        key, _, path = target.partition("=")
        if key == "wan_aio":
            write_header_only(path, WAN_AIO)
            continue
        plan = plans[key](scale)
        print(f"building {path} ({plan.nbytes / 2**30:.2f} GiB)", flush=True)
        write_plan(plan, path)


if __name__ == "__main__":
    main()
