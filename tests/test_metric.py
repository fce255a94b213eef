"""The metric: torch-exact sigmoid, and the original toolkit's formula recomputed with torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import model_toolkit as mtk
from conftest import PRINT_PEAK_RSS_KIB, key_list, run_python, write_sparse_safetensors
from model_toolkit.analysis import analyze
from model_toolkit.architectures import keylists
from model_toolkit.metric import Metric, compute_metric, known_components
from model_toolkit.readings import broken_position_ids
from model_toolkit.sigmoid import half_tables, torch_sigmoid


@pytest.fixture(autouse=True)
def one_thread():
    """torch's tail handling depends on how it splits work; one thread is the reference."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, np.float32).view(np.uint32)


def test_sigmoid_matches_torch_on_millions_of_values():
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [
            rng.standard_normal(1_000_000).astype(np.float32) * 0.02,
            rng.standard_normal(1_000_000).astype(np.float32) * 8,
            rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        ]
    )
    values = values[~np.isnan(values)]
    for length in (len(values), len(values) - 7, 13, 16, 31):  # every kind of remainder
        sample = values[:length]
        expected = torch.sigmoid(torch.from_numpy(sample.copy())).numpy()
        assert np.array_equal(bits(torch_sigmoid(sample)), bits(expected)), length


def test_half_tables_match_torch_for_every_float16():
    halves = np.arange(65536, dtype=np.uint16).view(np.float16)
    numbers = halves[~np.isnan(halves)].astype(np.float32)
    vector, scalar = half_tables()
    keep = ~np.isnan(halves)
    as_tensor = torch.from_numpy(numbers.copy())
    expected_vector = (torch.sigmoid(as_tensor) - 0.5).numpy()  # 65536-ish: vector blocks...
    split = len(numbers) - len(numbers) % 16
    assert np.array_equal(bits(vector[keep][:split]), bits(expected_vector[:split]))
    # ...and the scalar path, one element at a time.
    singles = torch.stack([torch.sigmoid(v.reshape(1)) - 0.5 for v in as_tensor]).reshape(-1)
    assert np.array_equal(bits(scalar[keep]), bits(singles.numpy()))


def original_metric(path, unet_names, vae_names, clip_names, clip_v1=True):
    """The original toolkit's compute_metric, in torch, over a file loaded by safetensors."""
    model = load_file(path)
    unet = vae = clip = 0

    def tensor_metric(t):
        t = t.to(torch.float16).to(torch.float32)
        return torch.sum(torch.sigmoid(t) - 0.5)

    for k in model:
        if k in unet_names:
            unet += tensor_metric(model[k])
        if k in vae_names and ("encoder." in k or "decoder." in k):
            vae += tensor_metric(model[k])
        if k in clip_names and "mlp." in k and ".23." not in k:
            clip += tensor_metric(model[k])
    b_unet, b_vae, b_clip = -6131.5400, 17870.7051, -2097.8596 if clip_v1 else -8757.5630
    k_unet, k_vae, k_clip = 10000, 10000, 1000000 if clip_v1 else 10000
    out = []
    for total, base, scale in ((unet, b_unet, k_unet), (vae, b_vae, k_vae), (clip, b_clip, k_clip)):
        if isinstance(total, int):
            out.append(None)
            continue
        n = int(abs(total / base - 1) * scale)
        while n >= 10000:
            n -= 5000
        out.append(n)
    return out


def filled(entries, names, rng, dtype=np.float16, scale=0.05):
    return {
        name: (rng.standard_normal(shape) * scale).astype(dtype)
        for name, shape in entries
        if name in names
    }


def vae_file(tmp_path, rng, parts):
    """A standalone SD-v1 VAE in fp32: random weights in the blocks whose names have one of
    `parts`, zeros (holes) elsewhere."""
    entries = keylists.load("VAE-v1-SD")
    chosen = {n for n, _ in entries if any(part in n for part in parts)}
    return write_sparse_safetensors(
        tmp_path / "vae.safetensors",
        entries,
        dtype="F32",
        fill=filled(entries, chosen, rng, np.float32, 0.3),
    )


def test_metric_of_sd1_checkpoint_equals_the_original(tmp_path):
    rng = np.random.default_rng(3)
    entries = key_list("Checkpoint-SD1-LDM")
    names = [n for n, _ in entries]
    chosen = {
        n
        for n in names
        if n.endswith(
            (
                "emb_layers.1.weight",
                "norm.bias",
                "conv_out.weight",
                "fc1.weight",
                "fc2.bias",
                "mid.attn_1.q.weight",
            )
        )
    }
    path = write_sparse_safetensors(
        tmp_path / "sd1.safetensors", entries, fill=filled(entries, chosen, rng)
    )
    with mtk.open(path) as model:
        metric = compute_metric(analyze(model))
    unet = {n for n in names if n.startswith("model.diffusion_model.")}
    vae = {n for n in names if n.startswith("first_stage_model.")}
    clip = {n for n in names if n.startswith("cond_stage_model.")}
    expected = original_metric(path, unet, vae, clip)
    assert [metric.unet, metric.vae, metric.clip] == expected
    assert metric.string == "/".join(f"{v:04}" for v in expected)


def test_metric_of_standalone_vae_and_clip_v2(tmp_path):
    rng = np.random.default_rng(5)
    vae_entries = keylists.load("VAE-v1-SD")
    path = vae_file(tmp_path, rng, ("up.3", "down.0"))
    with mtk.open(path) as model:
        metric = compute_metric(analyze(model))
    expected = original_metric(path, set(), {n for n, _ in vae_entries}, set())
    assert metric.unet is None and metric.clip is None
    assert metric.vae == expected[1]
    assert metric.string == f"----/{expected[1]:04}/----"

    clip_entries = keylists.load("CLIP-v2-SD")
    chosen = {n for n, _ in clip_entries if "mlp" in n}
    path = write_sparse_safetensors(
        tmp_path / "clip.safetensors",
        clip_entries,
        fill=filled(clip_entries, chosen, rng, np.float16, 0.1),
    )
    with mtk.open(path) as model:
        metric = compute_metric(analyze(model))
    expected = original_metric(path, set(), set(), {n for n, _ in clip_entries}, clip_v1=False)
    assert metric.clip == expected[2]


def test_known_components_within_one():
    assert known_components(Metric("x", None, 2981, None)) == ["NAI VAE"]
    assert known_components(Metric("x", None, 869, 0)) == ["SD-v2 VAE", "SD-v1 CLIP"]
    assert known_components(Metric("x", None, 500, None)) == []


def test_nan_weights_are_reported_not_crashed_on(tmp_path):
    entries = keylists.load("VAE-v1-SD")
    name = "decoder.conv_in.bias"
    values = np.zeros(512, np.float32)
    values[3] = np.nan
    path = write_sparse_safetensors(
        tmp_path / "nan.safetensors", entries, dtype="F32", fill={name: values}
    )
    with mtk.open(path) as model:
        metric = compute_metric(analyze(model))
    assert metric.string == "----/NaN!/----" and metric.vae is None


def test_broken_position_ids(tmp_path):
    entries = key_list("Checkpoint-SD1-LDM")
    ids_name = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    broken = np.arange(77, dtype=np.float32).reshape(1, 77)
    broken[0, 76] = 75.99998  # rounds down to 75 as int64: broken
    broken[0, 40] = 40.00001  # still 40: fine
    path = write_sparse_safetensors(
        tmp_path / "m.safetensors", entries, fill={ids_name: (broken, "F32")}
    )
    with mtk.open(path) as model:
        assert broken_position_ids(analyze(model)) == {ids_name: [76]}
    good = write_sparse_safetensors(
        tmp_path / "g.safetensors", entries, fill={ids_name: (np.arange(77).reshape(1, 77), "I64")}
    )
    with mtk.open(good) as model:
        assert broken_position_ids(analyze(model)) == {ids_name: []}


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_compiled_sums_equal_numpy_sums(dtype, portable, monkeypatch, request):
    """The compiled one-pass sum (rounding to float16 included) against numpy's gather-and-sum,
    with the vector/scalar cut anywhere, NaN and infinities included."""
    from model_toolkit import casting
    from model_toolkit.metric import _chunk_sum

    if casting.kernels is None:
        pytest.skip("the compiled kernels are not built here (no C compiler at install)")
    if portable:  # the loop used where the CPU lacks F16C
        casting.kernels.use_portable_half()
        request.addfinalizer(casting.kernels.use_best_half)
    rng = np.random.default_rng(11)
    values = (rng.standard_normal(100_003) * 0.05).astype(dtype)
    specials = np.array([np.inf, -np.inf, 70000.0, 1e-6, -3e-8], dtype=np.float32)
    with np.errstate(over="ignore"):  # 70000 is inf in float16
        values[::997] = specials[np.arange(len(values[::997])) % 5].astype(dtype)
    sums = {}
    for cut in (0, 16, 50_000, len(values)):
        compiled = _chunk_sum(values, cut)
        with monkeypatch.context() as patch:
            patch.setattr(casting, "kernels", None)
            plain = _chunk_sum(values, cut)
        assert compiled == pytest.approx(plain, rel=1e-12, abs=1e-9), cut
        sums[cut] = compiled
    assert len(set(sums.values())) > 1  # the two tables differ, so the cut matters
    values[5] = np.nan
    assert np.isnan(_chunk_sum(values, 16))


def test_metric_memory_stays_small_though_it_maps_the_file(tmp_path):
    """The metric sums the weights in the file's mapping; each chunk's pages leave the resident
    set after it, so summing a 335 MB VAE does not count 335 MB of mapped pages."""
    entries = keylists.load("VAE-v1-SD")
    path = write_sparse_safetensors(tmp_path / "vae.safetensors", entries, dtype="F32")
    script = (
        "import model_toolkit as m, sys\n"
        "from model_toolkit.metric import compute_metric\n"
        "with m.open(sys.argv[1]) as f:\n"
        "    print(compute_metric(m.analyze(f)).string)\n" + PRINT_PEAK_RSS_KIB
    )
    metric, peak_kib = run_python(script, path).split()
    assert metric.startswith("----/") and metric.endswith("/----")
    assert int(peak_kib) < 150 * 1024, f"peak RSS {int(peak_kib) / 1024:.0f} MiB"


def test_metric_of_a_plan_equals_that_of_its_file(tmp_path):
    """A plan's tensors (PlanEntry, copied values) are summed like a file's (mapped in place)."""
    from model_toolkit.operations import convert

    path = vae_file(tmp_path, np.random.default_rng(9), ("up.3", "mid"))
    with mtk.open(path) as model:
        from_file = compute_metric(analyze(model))
        from_plan = compute_metric(analyze(convert(model, None)))
    assert from_file.vae is not None and from_plan == from_file
