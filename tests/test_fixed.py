"""The accelerator path (`kernels="fixed"`), run on CPU tensors: same inputs, same outputs, fixed shapes.

Everything here runs without a GPU: the device-side input builder is compared bit for bit with the
host's, the fixed-shape forward with upstream's golden outputs, and the pack plan is checked to use
only its fixed set of shapes. CUDA-only parts (streams, pinned memory, graphs) are in test_cuda.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tessera_pipeline.bench.quality import compare
from tessera_pipeline.encode import EncodeSettings, TileEncoder, device_prep, prepare
from tessera_pipeline.encode.fixed_engine import PackPlan, _Pending
from tessera_pipeline.encode.normalisation import V1_1
from tessera_pipeline.hardware import HardwareInfo, default_precision
from tessera_pipeline.inputs.dpixel import open_tile
from tessera_pipeline.inputs.synthetic import synthetic_arrays
from tessera_pipeline.inputs.tile import DPixelTile
from tessera_pipeline.model import load_model
from tessera_pipeline.model.fixed import FixedBackbone

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
CASES = json.loads((GOLDEN / "cases.json").read_text())
CPU = torch.device("cpu")


def synthetic(h: int, w: int, seed: int = 0, **counts: int) -> DPixelTile:
    return DPixelTile(name=f"syn{h}x{w}", **synthetic_arrays(h, w, seed=seed, **counts))


@pytest.fixture(scope="module")
def small_v1_1():
    return load_model(str(GOLDEN / "v1_1" / "checkpoint.pt"))


# --- pack plan ---------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [29 * 64, 256 * 64, 2048 * 64])
def test_pack_plan_uses_a_small_fixed_set_of_sizes_that_hold_every_tail(budget: int) -> None:
    plan = PackPlan(budget)
    for length in prepare.V1_1_BUCKETS:
        sizes = plan.sizes(length)
        assert sizes[0] == plan.full(length) and list(sizes) == sorted(set(sizes), reverse=True)
        assert all(s % plan.quantum == 0 and s <= plan.max_pixels for s in sizes)
        assert len(sizes) <= 12
        assert plan.full(length) * length <= max(budget, plan.quantum * length)
        for n in range(1, plan.full(length) + 1):
            tail = plan.tail(length, n)
            assert tail in sizes and tail >= n and (tail < 2 * n or tail == plan.quantum)


def test_pending_queue_hands_out_pixels_in_order_across_pushes() -> None:
    q = _Pending()
    q.push(np.arange(5), torch.arange(5.0)[:, None])
    q.push(np.arange(5, 9), torch.arange(5.0, 9.0)[:, None])
    ids, tokens = q.take(6)
    assert ids.tolist() == list(range(6)) and tokens is not None and tokens[:, 0].tolist() == list(range(6))
    assert q.count == 3
    ids, tokens = q.take(8)
    assert ids.tolist() == [6, 7, 8] and q.count == 0


def test_tiles_of_any_size_only_meet_the_plans_shapes(small_v1_1, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: set[tuple[int, int]] = set()
    original = FixedBackbone.__call__

    def spy(self, bands, doy, pixels, length):  # type: ignore[no-untyped-def]
        seen.add((pixels, length))
        assert bands.shape == (pixels * length, self.cfg.bands) and doy.shape == (pixels * length,)
        return original(self, bands, doy, pixels, length)

    monkeypatch.setattr(FixedBackbone, "__call__", spy)
    encoder = TileEncoder(small_v1_1, EncodeSettings(kernels="fixed", batch_size=8, chunk_pixels=50))
    plan = encoder._engine.plan  # type: ignore[union-attr]
    for h, w, seed in ((9, 7, 1), (13, 11, 2), (6, 17, 3)):
        encoder.encode(synthetic(h, w, seed))
    allowed = {(s, n) for n in prepare.V1_1_BUCKETS for s in plan.sizes(n)}
    assert seen and seen <= allowed


# --- device-side inputs ------------------------------------------------------------------


def _device_inputs(chunk: prepare.Chunk, stream: str, pixels: np.ndarray, length: int, source: str) -> np.ndarray:
    """(P, length, C+1) inputs built by device_prep on CPU tensors from the chunk's raw values."""
    tile_values = chunk.s2 if stream == "s2" else chunk.s1
    doy = chunk.s2_doy if stream == "s2" else chunk.s1_doy
    arrays = device_prep.allocate_stream(stream, chunk.n_pixels, doy.astype(np.int64), tile_values.shape[-1], V1_1[source], CPU,
                                         chunk.n_ascending)
    raw = torch.from_numpy(np.ascontiguousarray(tile_values.transpose(1, 0, 2)).view(np.int16))
    mask = torch.from_numpy(np.ascontiguousarray(chunk.s2_valid.T).astype(np.uint8)) if stream == "s2" else None
    device_prep.store_block(arrays, 0, raw, mask)
    bands, doys = device_prep.gather_tokens(arrays, torch.from_numpy(pixels), length)
    out = torch.cat([bands, doys.float()[:, None]], dim=1)
    return out.view(len(pixels), length, -1).numpy()


def _assert_inputs_match_host(chunk: prepare.Chunk, source: str) -> None:
    for stream, valid, build in (("s2", chunk.s2_valid, prepare.v1_1_s2_input), ("s1", chunk.s1_valid, prepare.v1_1_s1_input)):
        n_valid = valid.sum(axis=1)
        lengths = prepare.bucket_lengths(n_valid)
        for length in np.unique(lengths[n_valid > 0]):
            pixels = np.flatnonzero((lengths == length) & (n_valid > 0))
            expected = build(chunk, pixels, int(length), V1_1[source])
            got = _device_inputs(chunk, stream, pixels, int(length), source)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), (stream, length)


@pytest.mark.parametrize("name,source", [("tile_a", "mpc"), ("tile_b", "aws")])
def test_device_inputs_are_bit_identical_to_the_hosts_on_golden_tiles(name: str, source: str) -> None:
    tile = open_tile(GOLDEN / "v1_1" / name)
    _assert_inputs_match_host(prepare.read_chunk(tile, 0, tile.height), source)


def test_device_inputs_match_with_high_dn_long_series_and_an_empty_orbit() -> None:
    arrays = synthetic_arrays(6, 9, seed=11, n_s2=300, n_s1_asc=0, n_s1_desc=40)
    arrays["masks"][:, :2] = 1  # 300 clear dates: downsampled to 256
    arrays["bands"][:5, 3] = 65000  # above int16's range: read back as unsigned
    chunk = prepare.read_chunk(DPixelTile(name="t", **arrays), 0, 6)
    assert chunk.s2_valid.sum(axis=1).max() > 256
    _assert_inputs_match_host(chunk, "mpc")


def test_resample_table_rows_are_upstreams_index_maps() -> None:
    table = device_prep.resample_table(300)
    for n in (1, 7, 8, 9, 100, 256, 257, 300):
        target = int(prepare.bucket_lengths(np.array([n]))[0])
        assert np.array_equal(table[n, :target], prepare.build_resample_indices(n, target))


# --- outputs -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_fixed_path_reproduces_upstream_golden_files(case: dict) -> None:
    loaded = load_model(str(GOLDEN / case["checkpoint"]))
    settings = EncodeSettings(precision="fp32", kernels="fixed", data_source=case["data_source"] or "mpc", batch_size=29, chunk_pixels=60)
    encoded = TileEncoder(loaded, settings).encode(open_tile(GOLDEN / case["input"]))
    expected = np.load(GOLDEN / case["expected_int8"])
    diff = np.abs(encoded.embeddings.astype(np.int16) - expected)
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999
    scales = np.load(GOLDEN / case["expected_scales"])
    assert np.array_equal(encoded.scales[scales == 0], scales[scales == 0])
    assert np.allclose(encoded.scales[scales > 0], scales[scales > 0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_fixed_path_float_embeddings_within_golden_tolerance(case: dict) -> None:
    loaded = load_model(str(GOLDEN / case["checkpoint"]))
    tile = open_tile(GOLDEN / case["input"])
    chunk = prepare.read_chunk(tile, 0, tile.height)
    encoder = TileEncoder(loaded, EncodeSettings(precision="fp32", kernels="fixed", data_source=case["data_source"] or "mpc"))
    where, reps = encoder.embed_chunk(chunk)
    suffix = "emb192_f32" if case["model"] == "v1.1" else "f32"
    expected = np.load(GOLDEN / Path(case["expected_int8"]).parent / f"{case['name']}_{suffix}.npy").reshape(chunk.n_pixels, -1)
    assert np.abs(reps.numpy() - expected[where]).max() <= 1e-5


def test_fixed_path_bytes_do_not_depend_on_chunking_or_pack_size(small_v1_1) -> None:
    tile = synthetic(24, 19, seed=6)
    runs = [TileEncoder(small_v1_1, EncodeSettings(kernels="fixed", chunk_pixels=c, batch_size=b)).encode(tile) for c, b in ((100_000, 256), (19 * 5, 7))]
    q = compare(runs[0].embeddings, runs[0].scales, runs[1].embeddings, runs[1].scales)
    assert q.off_by_2_plus == 0 and q.exact > 0.999


def test_fixed_path_empty_pixels_share_the_constant_and_v1_0_skips_blanks(small_v1_1) -> None:
    arrays = synthetic_arrays(10, 9, seed=5)
    arrays["masks"][:, :3, :] = 0
    arrays["sar_ascending"][:, :3, :] = 0
    arrays["sar_descending"][:, :3, :] = 0
    tile = DPixelTile(name="t", **arrays)
    fixed = TileEncoder(small_v1_1, EncodeSettings(kernels="fixed")).encode(tile)
    packed = TileEncoder(small_v1_1, EncodeSettings(kernels="packed")).encode(tile)
    empty = fixed.embeddings[:3].reshape(-1, fixed.embeddings.shape[-1])
    assert (empty == empty[0]).all() and fixed.stats.empty_s2 >= 27 and fixed.stats.empty_s1 >= 27
    assert np.abs(fixed.embeddings.astype(int) - packed.embeddings).max() <= 1

    v1_0 = load_model(str(GOLDEN / "v1_0" / "checkpoint.pt"))
    arrays = synthetic_arrays(12, 10, seed=4)
    arrays["bands"][:, 2:4, 3:6] = 0
    tile = DPixelTile(name="t", **arrays)
    a = TileEncoder(v1_0, EncodeSettings(kernels="fixed", seed=1, chunk_pixels=30, batch_size=3)).encode(tile)
    b = TileEncoder(v1_0, EncodeSettings(kernels="packed", seed=1)).encode(tile)
    assert a.stats.skipped_pixels == 6 and not a.scales[2:4, 3:6].any()
    assert np.abs(a.embeddings.astype(int) - b.embeddings).max() <= 1 and np.allclose(a.scales, b.scales, rtol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_fixed_path_meets_the_quality_bar_on_cpu(small_v1_1, precision: str) -> None:
    tile = synthetic(16, 16, seed=8)
    ref = TileEncoder(small_v1_1, EncodeSettings(precision="fp32", kernels="fixed")).encode(tile)
    low = TileEncoder(small_v1_1, EncodeSettings(precision=precision, kernels="fixed")).encode(tile)  # type: ignore[arg-type]
    q = compare(ref.embeddings, ref.scales, low.embeddings, low.scales)
    assert np.isfinite(low.scales).all() and q.exact + q.off_by_1 >= 0.985 and q.cosine_min >= 0.999


def test_precision_policy_keeps_gpus_without_bf16_in_fp32() -> None:
    def gpu(cap: tuple[int, int]) -> HardwareInfo:
        return HardwareInfo("cuda-x", "cuda:0", "cpu", frozenset(), 1, (0,), "NVIDIA X", cap)

    assert default_precision(gpu((9, 0))) == "bf16" and default_precision(gpu((8, 0))) == "bf16"
    assert default_precision(gpu((7, 5))) == "fp32"  # T4-class: fp16 is a run-config option, unmeasured on a T4
    assert default_precision(gpu((6, 1))) == "fp32"
