"""The GPU path on a real CUDA device: golden exactness in fp32, fast path vs reference, quality per precision.

Skipped, with the reason, where torch sees no CUDA device (CI, the project's VM). The CPU-side
checks of the same code (device-side inputs, pack shapes, golden outputs of the fixed path on CPU
tensors) are in test_fixed.py and always run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tessera_pipeline.bench.encoder_bench import random_model, synthetic_tile
from tessera_pipeline.bench.quality import compare
from tessera_pipeline.encode import EncodeSettings, TileEncoder, device_prep, prepare
from tessera_pipeline.encode.normalisation import V1_1
from tessera_pipeline.inputs.dpixel import open_tile
from tessera_pipeline.model import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False")

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
CASES = json.loads((GOLDEN / "cases.json").read_text())
CUDA = "cuda:0"
#: The issue's bar for a low precision against fp32: exact + off-by-one, and the worst pixel's cosine.
EXACT_PLUS_1 = 0.985
COSINE_MIN = 0.999


def _settings(case: dict, **kw: object) -> EncodeSettings:
    return EncodeSettings(device=CUDA, data_source=case["data_source"] or "mpc", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("kernels", ["fixed", "module"])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_fp32_on_cuda_is_exact_on_999_permille_and_never_off_by_two(case: dict, kernels: str) -> None:
    loaded = load_model(str(GOLDEN / case["checkpoint"]))
    encoded = TileEncoder(loaded, _settings(case, precision="fp32", kernels=kernels, batch_size=29)).encode(open_tile(GOLDEN / case["input"]))
    expected = np.load(GOLDEN / case["expected_int8"])
    diff = np.abs(encoded.embeddings.astype(np.int16) - expected)
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, f"exact {(diff == 0).mean():.5f}, max {diff.max()}"
    scales = np.load(GOLDEN / case["expected_scales"])
    assert np.array_equal(encoded.scales[scales == 0], scales[scales == 0])
    assert np.allclose(encoded.scales[scales > 0], scales[scales > 0], rtol=1e-4, atol=0)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_float_embeddings_on_cuda_within_tolerance(case: dict) -> None:
    loaded = load_model(str(GOLDEN / case["checkpoint"]))
    tile = open_tile(GOLDEN / case["input"])
    chunk = prepare.read_chunk(tile, 0, tile.height)
    where, reps = TileEncoder(loaded, _settings(case, precision="fp32", kernels="fixed")).embed_chunk(chunk)
    suffix = "emb192_f32" if case["model"] == "v1.1" else "f32"
    expected = np.load(GOLDEN / Path(case["expected_int8"]).parent / f"{case['name']}_{suffix}.npy").reshape(chunk.n_pixels, -1)
    assert np.abs(reps.cpu().numpy() - expected[where]).max() <= 1e-4


@pytest.mark.parametrize("name,source", [("tile_a", "mpc"), ("tile_b", "aws")])
def test_device_inputs_on_cuda_are_bit_identical_to_the_hosts(name: str, source: str) -> None:
    tile = open_tile(GOLDEN / "v1_1" / name)
    chunk = prepare.read_chunk(tile, 0, tile.height)
    dev = torch.device(CUDA)
    for stream, valid, build in (("s2", chunk.s2_valid, prepare.v1_1_s2_input), ("s1", chunk.s1_valid, prepare.v1_1_s1_input)):
        values = chunk.s2 if stream == "s2" else chunk.s1
        doy = chunk.s2_doy if stream == "s2" else chunk.s1_doy
        arrays = device_prep.allocate_stream(stream, chunk.n_pixels, doy.astype(np.int64), values.shape[-1], V1_1[source], dev, chunk.n_ascending)
        raw = torch.from_numpy(np.ascontiguousarray(values.transpose(1, 0, 2)).view(np.int16)).to(dev)
        mask = torch.from_numpy(np.ascontiguousarray(chunk.s2_valid.T).astype(np.uint8)).to(dev) if stream == "s2" else None
        device_prep.store_block(arrays, 0, raw, mask)
        n_valid = valid.sum(axis=1)
        lengths = prepare.bucket_lengths(n_valid)
        for length in np.unique(lengths[n_valid > 0]):
            pixels = np.flatnonzero((lengths == length) & (n_valid > 0))
            bands, doys = device_prep.gather_tokens(arrays, torch.from_numpy(pixels).to(dev), int(length))
            got = torch.cat([bands, doys.float()[:, None]], dim=1).view(len(pixels), int(length), -1).cpu().numpy()
            assert np.array_equal(got, build(chunk, pixels, int(length), V1_1[source]))


def test_fast_path_matches_the_reference_path_on_cuda() -> None:
    loaded = load_model(str(GOLDEN / "v1_1" / "checkpoint.pt"))
    tile = synthetic_tile(40, 33, seed=3)
    fixed = TileEncoder(loaded, EncodeSettings(device=CUDA, precision="fp32", kernels="fixed", batch_size=64)).encode(tile)
    module = TileEncoder(loaded, EncodeSettings(device=CUDA, precision="fp32", kernels="module")).encode(tile)
    q = compare(module.embeddings, module.scales, fixed.embeddings, fixed.scales)
    assert q.off_by_2_plus == 0 and q.exact >= 0.999, q


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_meets_the_bar_against_fp32_on_cuda(precision: str) -> None:
    loaded = random_model("v1.1")
    tile = synthetic_tile(48, 40, seed=9)
    ref = TileEncoder(loaded, EncodeSettings(device=CUDA, precision="fp32", kernels="fixed")).encode(tile)
    low = TileEncoder(loaded, EncodeSettings(device=CUDA, precision=precision, kernels="fixed")).encode(tile)  # type: ignore[arg-type]
    q = compare(ref.embeddings, ref.scales, low.embeddings, low.scales)
    assert np.isfinite(low.scales).all()
    assert q.exact + q.off_by_1 >= EXACT_PLUS_1 and q.cosine_min >= COSINE_MIN, q


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_low_precision_meets_the_bar_on_golden_tiles_on_cuda(case: dict, precision: str) -> None:
    loaded = load_model(str(GOLDEN / case["checkpoint"]))
    tile = open_tile(GOLDEN / case["input"])
    ref = TileEncoder(loaded, _settings(case, precision="fp32", kernels="fixed")).encode(tile)
    low = TileEncoder(loaded, _settings(case, precision=precision, kernels="fixed")).encode(tile)
    q = compare(ref.embeddings, ref.scales, low.embeddings, low.scales)
    assert np.isfinite(low.scales).all()
    assert q.exact + q.off_by_1 >= EXACT_PLUS_1 and q.cosine_min >= COSINE_MIN, q


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_replay_the_eager_computation(precision: str) -> None:
    loaded = random_model("v1.1")
    tile = synthetic_tile(24, 30, seed=4)
    eager = TileEncoder(loaded, EncodeSettings(device=CUDA, precision=precision, kernels="fixed", batch_size=64))  # type: ignore[arg-type]
    graphed = TileEncoder(loaded, EncodeSettings(device=CUDA, precision=precision, kernels="fixed", batch_size=64, cuda_graphs=True))  # type: ignore[arg-type]
    graphed.warm_up()
    a, b, c = eager.encode(tile), graphed.encode(tile), graphed.encode(tile)
    q = compare(a.embeddings, a.scales, b.embeddings, b.scales)
    assert q.off_by_2_plus == 0 and q.exact >= 0.999, q
    assert np.array_equal(b.embeddings, c.embeddings)
