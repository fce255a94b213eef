"""By hand: load GGUF files with ComfyUI-GGUF's own loader and dequantizer (city96/ComfyUI-GGUF,
loader.py, ops.py, dequant.py, copied as they are into a folder given here, with a stand-in for
the few `comfy` names ops.py subclasses at import), and compare what it loads with what
`mtk` reads: the same names, the same shapes, the same values.

    python scripts/comfyui_gguf_check.py FOLDER FILE.gguf ...

FOLDER holds the package `cgguf` (their three files) and the stand-in `comfy`. Not a test:
their code is not ours to ship; the note of the issue says what it found.
"""

import sys

import numpy as np
import torch

sys.path.insert(0, sys.argv[1])
from cgguf.dequant import dequantize_tensor
from cgguf.loader import gguf_sd_loader

import model_toolkit as mtk

for path in sys.argv[2:]:
    state, arch = gguf_sd_loader(path, return_arch=True)
    exact = close = 0
    with mtk.open(path) as model:
        assert set(state) == set(model.tensors), set(state) ^ set(model.tensors)
        for name, tensor in state.items():
            ref = model.tensors[name]
            assert tuple(tensor.tensor_shape) == ref.shape, (name, tensor.tensor_shape, ref.shape)
            theirs = (
                dequantize_tensor(tensor, dtype=torch.float32, dequant_dtype=torch.float32)
                .reshape(ref.shape)
                .numpy()
            )
            ours = mtk.read_all(ref).astype(np.float32)
            if np.array_equal(theirs.view(np.uint32), ours.view(np.uint32)):
                exact += 1
            elif np.allclose(theirs, ours, rtol=1e-6, atol=0):
                close += 1
            else:
                raise AssertionError(f"{name}: values differ")
    print(f"{path}: arch {arch}, {len(state)} tensors, {exact} bit-equal, {close} within 1e-6")
