"""Encoder properties users rely on: chunking-independent bytes, bounded memory, bf16 really in the GEMMs."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tessera_pipeline.encode import EncodeSettings, TileEncoder, quantise
from tessera_pipeline.inputs.synthetic import synthetic_arrays
from tessera_pipeline.inputs.tile import DPixelTile
from tessera_pipeline.model import load_model

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


@pytest.fixture(scope="module")
def small_v1_1():
    return load_model(str(GOLDEN / "v1_1" / "checkpoint.pt"))


@pytest.fixture(scope="module")
def small_v1_0():
    return load_model(str(GOLDEN / "v1_0" / "checkpoint.pt"))


def synthetic(h: int, w: int, seed: int = 0) -> DPixelTile:
    return DPixelTile(name=f"syn{h}x{w}", **synthetic_arrays(h, w, seed=seed))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_tile_gives_same_bytes_whatever_the_chunking(small_v1_1, precision: str) -> None:
    tile = synthetic(24, 19)
    a = TileEncoder(small_v1_1, EncodeSettings(precision=precision, chunk_pixels=100_000)).encode(tile)
    b = TileEncoder(small_v1_1, EncodeSettings(precision=precision, chunk_pixels=19 * 5)).encode(tile)
    c = TileEncoder(small_v1_1, EncodeSettings(precision=precision, chunk_pixels=100_000)).encode(tile)
    assert np.array_equal(a.embeddings, c.embeddings) and np.array_equal(a.scales, c.scales)
    diff = np.abs(a.embeddings.astype(int) - b.embeddings.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_v1_0_output_is_reproducible_per_seed_and_skips_blank_pixels(small_v1_0) -> None:
    arrays = synthetic_arrays(12, 10, seed=4)
    arrays["bands"][:, 2:4, 3:6] = 0
    tile = DPixelTile(name="t", **arrays)
    run = lambda seed: TileEncoder(small_v1_0, EncodeSettings(seed=seed)).encode(tile)  # noqa: E731
    a, b, c = run(1), run(1), run(2)
    assert np.array_equal(a.embeddings, b.embeddings)
    assert not np.array_equal(a.embeddings, c.embeddings)
    assert not a.embeddings[2:4, 3:6].any() and not a.scales[2:4, 3:6].any()
    assert a.stats.skipped_pixels == 6 and (a.scales > 0).sum() == 120 - 6


def test_empty_pixels_share_one_constant_embedding(small_v1_1) -> None:
    arrays = synthetic_arrays(10, 9, seed=5)
    arrays["masks"][:, :3, :] = 0
    arrays["sar_ascending"][:, :3, :] = 0
    arrays["sar_descending"][:, :3, :] = 0
    encoded = TileEncoder(small_v1_1, EncodeSettings()).encode(DPixelTile(name="t", **arrays))
    empty = encoded.embeddings[:3].reshape(-1, encoded.embeddings.shape[-1])
    assert (empty == empty[0]).all() and encoded.scales[:3].min() > 0
    assert encoded.stats.empty_s2 >= 27 and encoded.stats.empty_s1 >= 27


def test_encoding_streams_rows_and_never_holds_the_tile_as_float32(small_v1_1) -> None:
    tile = synthetic(96, 50)
    as_float32 = tile.bands.size * 4
    encoder = TileEncoder(small_v1_1, EncodeSettings(chunk_pixels=500, batch_size=64))
    encoder.encode(synthetic(4, 4))
    tracemalloc.start()
    encoder.encode(tile)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < as_float32 / 4


class GemmDtypes(TorchDispatchMode):
    """Records the input dtypes of every matrix-multiply-like op, except matrix-vector products.

    Pooling's query (D -> 1 score per token) and its softmax-weighted sum over tokens are
    matrix-vector products that stay float32, like softmax (they are <0.1 % of the FLOPs).
    """

    GEMMS = ("mm", "addmm", "bmm", "baddbmm", "linear", "_linear_pointwise", "scaled_dot_product", "matmul")

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, set[torch.dtype]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        weight = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else None
        one_wide = "linear" in str(func) and weight is not None and weight.dim() == 2 and weight.shape[0] == 1
        one_wide = one_wide or ("bmm" in str(func) and args[0].shape[-2] == 1)
        if any(g in str(func) for g in self.GEMMS) and not one_wide:
            self.seen.setdefault(str(func.overloadpacket.__name__), set()).update(
                a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() >= 2
            )
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kernels", ["packed", "module", "fixed"])
def test_bf16_reaches_every_matmul_and_fp32_none(small_v1_1, kernels: str) -> None:
    tile = synthetic(4, 5)
    cases = [("bf16", {torch.bfloat16}), ("fp32", {torch.float32})]
    if kernels == "fixed":
        cases.append(("fp16", {torch.float16}))
    for precision, expected in cases:
        encoder = TileEncoder(small_v1_1, EncodeSettings(precision=precision, kernels=kernels))  # type: ignore[arg-type]
        with GemmDtypes() as mode:
            encoder.encode(tile)
        assert mode.seen, "no GEMM observed"
        for op, dtypes in mode.seen.items():
            assert dtypes == expected, f"{op} ran on {dtypes} under {precision}"


def test_quantisation_is_upstreams_symmetric_half_to_even() -> None:
    e = torch.tensor([[127.0, 0.5, 1.5, -2.5, 63.5, 0.0], [0.0] * 6])
    q, s = quantise(e)
    assert s.dtype == torch.float32 and s[0] == 1.0 and s[1] == pytest.approx(1e-8)
    assert q[0].tolist() == [127, 0, 2, -2, 64, 0] and q[1].tolist() == [0] * 6
