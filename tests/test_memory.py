"""Bounded device memory (issue 20, item 2): a tile streams through the device in blocks set by a byte budget.

On CPU tensors: a tiny budget (many flushes and compactions of the working set) gives the same bytes
as the whole tile resident, for v1.1 (inputs on the device, empty streams) and v1.0 (host tokens,
skipped pixels); the accounting that sizes the blocks plans <= 8 GB for the largest land tile under
the default budget, and bounds the live tensors of a pack and of a whole bounded encode on CPU.
On CUDA (skipped without one): the measured peak of a full-size tile.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tessera_pipeline.encode import EncodeSettings, TileEncoder, memory, prepare
from tessera_pipeline.encode.fixed_engine import FixedShapeEngine, PackPlan
from tessera_pipeline.inputs.synthetic import synthetic_arrays
from tessera_pipeline.inputs.tile import DPixelTile
from tessera_pipeline.model import load_model
from tessera_pipeline.model.architecture import build_model, v1_0_config, v1_1_config
from tessera_pipeline.model.fixed import FixedBackbone
from tessera_pipeline.precision import DEVICE_MEMORY_BUDGET, GPU_BATCH

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
#: The largest land tile (issue 20) and the frame counts of a dense year (S2 every ~2.5 days, S1 both orbits).
LARGEST = (1140, 1116)
DENSE_FRAMES = {"s2_frames": 146, "s1_frames": 122}


def _tile(h: int, w: int, seed: int, blank_rows: int = 0) -> DPixelTile:
    """A synthetic tile whose first `blank_rows` rows have no observation at all (empty streams, v1.0 skips)."""
    arrays = synthetic_arrays(h, w, seed=seed, n_s2=24, n_s1_asc=8, n_s1_desc=8)
    for key in ("bands", "masks", "sar_ascending", "sar_descending"):
        arrays[key][:, :blank_rows] = 0
    return DPixelTile(name=f"syn{h}x{w}", **arrays)


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of storages that tensors created by torch ops keep alive, and their peak.

    A storage counts from the first op output that uses it until the last tensor object viewing it is
    collected: on CPU tensors this stands in for the device allocator's `max_memory_allocated`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.views: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.now = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.views[key] -= 1
        if not self.views[key]:
            self.now -= self.sizes.pop(key)
            del self.views[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr():
                key = t.untyped_storage().data_ptr()
                if key not in self.views:
                    self.views[key], self.sizes[key] = 0, t.untyped_storage().nbytes()
                    self.now += self.sizes[key]
                    self.peak = max(self.peak, self.now)
                self.views[key] += 1
                weakref.finalize(t, self._release, key)
        return out


def _tiny_budget(encoder: TileEncoder, tile: DPixelTile, rows: int) -> int:
    """A budget that leaves room for the carry and `rows` rows of new pixels: many flushes on a small tile."""
    plan = encoder._engine.memory_plan(tile)  # type: ignore[union-attr]
    compaction = min(memory.COMPACT_PIXELS, tile.height * tile.width) * plan.pixel_bytes
    return plan.fixed_bytes + plan.carry_pixels * plan.pixel_bytes + compaction + rows * tile.width * (plan.pixel_bytes + plan.upload_bytes)


@pytest.mark.parametrize("version", ["v1_1", "v1_0"])
def test_a_tiny_budget_streams_many_blocks_and_gives_the_unbounded_bytes(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model(str(GOLDEN / version / "checkpoint.pt"))
    tile = _tile(72, 23, seed=11, blank_rows=2)
    settings = EncodeSettings(kernels="fixed", batch_size=2, chunk_pixels=23 * 3, seed=3)
    whole = TileEncoder(loaded, EncodeSettings(**{**settings.__dict__, "device_budget": None}))
    probe = TileEncoder(loaded, settings)
    budget = _tiny_budget(probe, tile, rows=2)
    bounded = TileEncoder(loaded, EncodeSettings(**{**settings.__dict__, "device_budget": budget}))
    plan = bounded._engine.memory_plan(tile)  # type: ignore[union-attr]
    assert plan.capacity < tile.height * tile.width and plan.planned_bytes <= budget
    assert whole._engine.memory_plan(tile).capacity == tile.height * tile.width  # type: ignore[union-attr]

    flushes: list[tuple[int, int]] = []
    original = FixedShapeEngine._flush

    def spy(self, ws, runs, stats, sink):  # type: ignore[no-untyped-def]
        flushes.append((ws.count, ws.capacity))
        return original(self, ws, runs, stats, sink)

    monkeypatch.setattr(FixedShapeEngine, "_flush", spy)
    a = bounded.encode(tile)
    assert len(flushes) >= 4 and all(count <= capacity == plan.capacity for count, capacity in flushes)
    flushes.clear()
    b = whole.encode(tile)
    assert len(flushes) == 1
    assert np.array_equal(a.embeddings, b.embeddings) and np.array_equal(a.scales, b.scales)
    assert a.stats.empty_s2 == b.stats.empty_s2 and a.stats.skipped_pixels == b.stats.skipped_pixels
    assert a.stats.s2_tokens == b.stats.s2_tokens and a.stats.flops == b.stats.flops
    if version == "v1_0":
        assert a.stats.skipped_pixels == 2 * 23 and not a.scales[:2].any()
    else:
        assert a.stats.empty_s2 >= 2 * 23 and (a.embeddings[:2] == a.embeddings[0, 0]).all()


def test_planned_device_bytes_of_the_largest_land_tile_fit_a_t4_under_the_default_budget() -> None:
    cfg = v1_1_config()
    assert memory.model_parameters(cfg) == sum(p.numel() for p in build_model(cfg).parameters()) == 57_708_738
    assert memory.model_parameters(v1_0_config()) == 45_828_226
    full = {n: PackPlan(GPU_BATCH * 64).full(n) for n in prepare.V1_1_BUCKETS}
    h, w = LARGEST
    for dtype_bytes in (4, 2):
        for frames in (memory.TileFrames(h, w, **DENSE_FRAMES), memory.TileFrames(h, w, 300, 200)):
            bounded = memory.plan_memory(cfg, frames, dtype_bytes=dtype_bytes, full_pixels=full, budget=DEVICE_MEMORY_BUDGET,
                                         chunk_pixels=32768)
            unbounded = memory.plan_memory(cfg, frames, dtype_bytes=dtype_bytes, full_pixels=full, budget=None, chunk_pixels=32768)
            assert bounded.planned_bytes <= DEVICE_MEMORY_BUDGET <= 8e9
            assert bounded.block_rows >= 1 and bounded.capacity < frames.pixels
            assert unbounded.planned_bytes > 8e9  # the whole tile resident does not fit: the budget is what bounds it


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("pixels", "length"), [(64, 64), (16, 256), (512, 8)])
def test_a_packs_live_tensors_stay_within_its_planned_bytes(dtype: torch.dtype, pixels: int, length: int) -> None:
    torch.manual_seed(0)
    cfg = v1_1_config(latent_dim=32, n_layers=2, d_ff=256)
    backbone = FixedBackbone(build_model(cfg).eval().s2_backbone, dtype)
    bands, doy = torch.randn(pixels * length, cfg.s2.bands), torch.randint(1, 367, (pixels * length,))
    with torch.inference_mode(), LiveBytes() as live:
        backbone(bands, doy, pixels, length)
    planned = memory.pack_bytes(cfg.s2, pixels * length, dtype.itemsize)
    assert 0.6 * planned <= live.peak <= planned


def test_a_bounded_encodes_live_tensors_stay_within_its_plan() -> None:
    loaded = load_model(str(GOLDEN / "v1_1" / "checkpoint.pt"))
    tile = _tile(30, 23, seed=5, blank_rows=1)
    probe = TileEncoder(loaded, EncodeSettings(kernels="fixed", batch_size=2, chunk_pixels=23 * 2))
    encoder = TileEncoder(loaded, EncodeSettings(kernels="fixed", batch_size=2, chunk_pixels=23 * 2,
                                                 device_budget=_tiny_budget(probe, tile, rows=2)))
    plan: Any = encoder._engine.memory_plan(tile)  # type: ignore[union-attr]
    assert plan.capacity < tile.height * tile.width
    with LiveBytes() as live:
        encoder.encode(tile)
    weights = 4 * memory.model_parameters(loaded.config)  # already resident before the encode
    assert live.peak <= plan.planned_bytes - weights


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_cuda_memory_of_the_largest_land_tile_under_the_default_budget(tmp_path: Path) -> None:
    from tessera_pipeline.model.random_checkpoint import save_random_checkpoint

    path = save_random_checkpoint(tmp_path / "v1_1-random.pt")
    loaded = load_model(str(path))
    tile = DPixelTile(name="largest", **synthetic_arrays(*LARGEST, seed=1))
    runs = {}
    for budget in (DEVICE_MEMORY_BUDGET, None):
        encoder = TileEncoder(loaded, EncodeSettings(kernels="fixed", precision="bf16", batch_size=GPU_BATCH, device="cuda:0",
                                                     device_budget=budget))
        encoder.warm_up()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        runs[budget] = encoder.encode(tile)
        peak = torch.cuda.max_memory_allocated()
        if budget is not None:
            assert peak <= 8e9, f"peak {peak / 1e9:.2f} GB"
            assert peak <= encoder._engine.memory_plan(tile).planned_bytes  # type: ignore[union-attr]
        encoder.close()
        del encoder
        torch.cuda.empty_cache()
    a, b = runs[DEVICE_MEMORY_BUDGET], runs[None]
    assert np.array_equal(a.embeddings, b.embeddings) and np.array_equal(a.scales, b.scales)
