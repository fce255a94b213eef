"""The gguf package's own whole-model path, for the benchmark to compare with (not ours).

    python bench/gguf_reference.py quantize IN.safetensors OUT.gguf TYPE ARCH
    python bench/gguf_reference.py dequantize IN.gguf OUT.safetensors

It prints its own seconds (the benchmark's "program" cases), from before importing the package.

What a user does with the package alone, as city96's tools/convert.py does it: every tensor
loaded (safetensors' torch loader: numpy's knows no bfloat16), converted to float32, quantized
with `gguf.quants`, handed to GGUFWriter, which holds them all until `write_tensors_to_file`;
and back: GGUFReader, each
tensor dequantized to fp16, the whole state dict saved by safetensors. The same conventions as
`mtk` where they cost time (1-D and small tensors kept F32, the diffusion model alone), so that
the arithmetic compared is the same.
"""

from __future__ import annotations

import sys
import time

START = time.perf_counter()

import gguf  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

PREFIX = "model.diffusion_model."


def quantize(source: str, output: str, qtype_name: str, arch: str) -> None:
    qtype = gguf.GGMLQuantizationType[qtype_name]
    tensors = load_file(source)
    if any(name.startswith(PREFIX) for name in tensors):
        tensors = {n[len(PREFIX) :]: t for n, t in tensors.items() if n.startswith(PREFIX)}
    writer = gguf.GGUFWriter(output, arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    for name, tensor in tensors.items():
        values = tensor.float().numpy()
        kind = qtype
        if values.ndim <= 1 or values.size <= 1024:
            kind = gguf.GGMLQuantizationType.F32
        elif values.shape[-1] % block:
            kind = gguf.GGMLQuantizationType.F16
        if values.ndim > 4:
            values = values.reshape(values.shape[0], -1)
        writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def dequantize(source: str, output: str) -> None:
    reader = gguf.GGUFReader(source)
    tensors = {}
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(d) for d in reversed(tensor.shape))
        tensors[tensor.name] = values.reshape(shape).astype(np.float16)
    save_file(tensors, output)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"quantize": quantize, "dequantize": dequantize}[mode](*args)
    print(time.perf_counter() - START)  # the benchmark reads its seconds (imports included)
