"""Device-memory accounting of the fixed-shape path: what a tile needs on the accelerator, and the block it allows.

The fixed path (`encode.fixed_engine`) keeps a working set of pixels on the device: their raw
inputs (v1.1) or sampled tokens (v1.0) and their pooled vectors, until both streams are pooled
and the pixel is reduced and quantised. Pixels waiting in a pack queue stay resident (the
carry); new row blocks are uploaded until the working set is full, then finished pixels leave.
Peak device memory is therefore

    fixed (weights, tables, one pack in flight, one reduce slice)
    + capacity x bytes per resident pixel + one block's upload + one compaction slice,

where capacity = the most pixels that can wait in queues + one block. `plan_memory` picks the
largest block that keeps this within a budget; the engine sizes its buffers from the same plan.
The pack term is an upper bound of `model.fixed.FixedBackbone`'s live tensors (its GRU stage is
the largest), times `PACK_MARGIN` for allocator rounding and kernel workspaces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tessera_pipeline.model.architecture import BackboneConfig, ModelConfig

log = logging.getLogger(__name__)

#: Pixels reduced and quantised per step: every reduce call has exactly this many rows (padded),
#: so a pixel's bytes never depend on which other pixels share its slice.
REDUCE_PIXELS = 4096
#: Pixels moved per step when the working set is compacted (bounds the compaction's temporary).
COMPACT_PIXELS = 8192
#: Headroom on the pack's activation estimate (caching-allocator rounding, attention and GEMM workspaces).
PACK_MARGIN = 1.25
#: v1.0's sampled observations per stream (tokens per pixel on the v1.0 path).
V1_0_TOKENS = 40


@dataclass(frozen=True)
class TileFrames:
    """A tile's shape as the device sees it: pixels and the frames (dates) of each stream."""

    height: int
    width: int
    s2_frames: int
    s1_frames: int

    @property
    def pixels(self) -> int:
        """Pixels in the tile."""
        return self.height * self.width


@dataclass(frozen=True)
class MemoryPlan:
    """How one tile streams through the device: rows per block, working-set capacity, and the bytes that takes."""

    budget: int | None
    fixed_bytes: int
    pixel_bytes: int
    upload_bytes: int
    carry_pixels: int
    block_rows: int
    capacity: int
    width: int

    @property
    def block_pixels(self) -> int:
        """Pixels uploaded per block."""
        return self.block_rows * self.width

    @property
    def planned_bytes(self) -> int:
        """Planned peak device bytes: fixed costs, the working set at capacity, one upload, one compaction slice."""
        compaction = min(COMPACT_PIXELS, self.capacity) * self.pixel_bytes
        return self.fixed_bytes + self.capacity * self.pixel_bytes + self.block_pixels * self.upload_bytes + compaction


def backbone_parameters(cfg: BackboneConfig) -> int:
    """Parameters of one backbone (embedding MLP, post-LN layers, custom GRU pooling)."""
    d, f, b = cfg.d_model, cfg.d_ff, cfg.bands
    layer = 3 * d * d + 3 * d + d * d + d + f * d + f + d * f + d + 4 * d
    return b * d + d + d * d + d + cfg.n_layers * layer + 6 * d * d + 3 * d + 2 * d + d + 1


def model_parameters(config: ModelConfig) -> int:
    """Parameters of a whole model: both backbones and the reducer (linears, LayerNorms between them)."""
    widths = config.reducer
    linears = sum(i * o + o for i, o in zip(widths[:-1], widths[1:]))
    norms = sum(2 * w for w in widths[1:-1])
    return backbone_parameters(config.s2) + backbone_parameters(config.s1) + linears + norms


def pack_bytes(cfg: BackboneConfig, tokens: int, dtype_bytes: int) -> int:
    """Upper bound of the activations of one pack of `tokens` tokens in flight (FixedBackbone, one stream).

    The largest of its stages, per token: the GRU (hidden state, the last layer's pre-norm sum, the
    time-major copy, the input projections, float32 states and their LayerNorm: D x (6s + 8); measured
    on CPU tensors in `tests/test_memory.py`), a layer's attention (hidden, QKV, attention output and
    its transpose: 6 D s) or FFN ((2D + F) s), the embedding (2 D s + a float32 sinusoid); plus the
    gathered inputs (float32 bands, DOY and frame positions).
    """
    d, f, s = cfg.d_model, cfg.d_ff, dtype_bytes
    stage = max(d * (6 * s + 8), 6 * d * s, (2 * d + f) * s, 2 * d * s + 4 * d + cfg.bands * (4 + s))
    inputs = cfg.bands * (4 + 4 + 2) + 8 * 4
    return int(tokens * (stage + inputs) * PACK_MARGIN)


def reduce_bytes(config: ModelConfig, dtype_bytes: int) -> int:
    """Activations of one reduce-and-quantise slice of REDUCE_PIXELS pixels (every width in float32 and the compute dtype)."""
    widths = sum(config.reducer) + config.representation_dim + config.saved_dims
    return REDUCE_PIXELS * (widths * (4 + dtype_bytes) + config.saved_dims + 4)


def resident_bytes(config: ModelConfig, frames: TileFrames) -> int:
    """Device bytes per resident pixel: pooled float32 vectors of both streams, and its raw inputs or sampled tokens."""
    pooled = 4 * (config.s2.d_model + config.s1.d_model)
    if config.version == "v1.1":
        raw = frames.s2_frames * (2 * config.s2.bands + 1) + frames.s1_frames * (2 * config.s1.bands + 1)
    else:
        raw = 4 * V1_0_TOKENS * (config.s2.bands + 1 + config.s1.bands + 1)
    return pooled + raw


def upload_bytes(config: ModelConfig, frames: TileFrames) -> int:
    """Transient device bytes per pixel of a block being uploaded (time-major raw values, mask, validity temporaries)."""
    if config.version == "v1.0":
        return 4 * V1_0_TOKENS * (config.s2.bands + 1 + config.s1.bands + 1)
    return frames.s2_frames * (2 * config.s2.bands + 1) + frames.s1_frames * (3 * config.s1.bands + 1)


def carry_pixels(full_pixels: dict[int, int]) -> int:
    """Most pixels that can wait in pack queues once every full pack has run: fewer than a full pack per (stream, length)."""
    return 2 * sum(full - 1 for full in full_pixels.values())


def plan_memory(config: ModelConfig, frames: TileFrames, *, dtype_bytes: int, full_pixels: dict[int, int],
                budget: int | None, chunk_pixels: int, extra_bytes: int = 0, fp32_reruns: bool = False) -> MemoryPlan:
    """The block size for a tile under `budget` bytes (None: the whole tile resident, one flush at the end).

    `full_pixels` maps each bucket length the model uses to its full pack size (`PackPlan.full`);
    `extra_bytes` counts what the caller holds besides this accounting (e.g. CUDA-graph buffers);
    `fp32_reruns` (the fp16 guard) sizes the pack in flight for a float32 re-run. A budget too small for the fixed costs and one row still streams one row per block (logged).
    """
    weights = 4 * model_parameters(config)
    if dtype_bytes != 4:
        weights += dtype_bytes * model_parameters(config)
    tables = 4 * 367 * (config.s2.d_model + config.s1.d_model)
    tokens = max(full * length for length, full in full_pixels.items())
    pack_dtype = 4 if fp32_reruns else dtype_bytes
    pack = max(pack_bytes(config.s2, tokens, pack_dtype), pack_bytes(config.s1, tokens, pack_dtype))
    fixed = weights + tables + pack + reduce_bytes(config, dtype_bytes) + extra_bytes
    per_pixel = resident_bytes(config, frames)
    upload = upload_bytes(config, frames)
    width = max(frames.width, 1)
    host_rows = max(1, chunk_pixels // width)
    if budget is None:
        return MemoryPlan(None, fixed, per_pixel, upload, frames.pixels, min(host_rows, frames.height), frames.pixels, width)
    carry = min(carry_pixels(full_pixels), frames.pixels)
    compaction = min(COMPACT_PIXELS, frames.pixels) * per_pixel
    free = budget - fixed - carry * per_pixel - compaction
    budget_rows = max(0, free // (per_pixel + upload)) // width
    if budget_rows < 1:
        log.warning("device budget %.2f GB is below this tile's fixed costs and carry (%.2f GB): streaming one row per block",
                    budget / 1e9, (fixed + carry * per_pixel + compaction) / 1e9)
    budget_rows = max(budget_rows, 1)
    rows = int(min(budget_rows, host_rows, frames.height))
    capacity = int(min(frames.pixels, carry + budget_rows * width))
    return MemoryPlan(budget, fixed, per_pixel, upload, carry, rows, capacity, width)


__all__ = ["COMPACT_PIXELS", "MemoryPlan", "REDUCE_PIXELS", "TileFrames", "model_parameters", "plan_memory"]
