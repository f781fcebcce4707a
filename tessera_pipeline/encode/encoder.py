"""Layer 4: one d-pixel tile in, int8 (H, W, 128) embeddings and float32 (H, W) scales out.

The tile is streamed in row chunks (only one chunk's raw arrays are decoded at a time). Each
stream is bucketed by its own length (the backbones are independent until the concat, so this is
exact); pixels sorted by bucket are cut into packs of `batch_size` pixels whose tokens run through
one set of GEMMs (`model.packed`). Pooled vectors are fused by the reducer per pixel and quantised
per pixel. An empty v1.1 stream (no valid observation) has a constant pooled vector, computed once
per encoder. No Ray and no storage here.

On accelerators, `kernels="fixed"` hands the whole tile to `fixed_engine.FixedShapeEngine`:
fixed-shape packs of one bucket length each, inputs built on the device, host reads overlapped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from tessera_pipeline.encode import prepare
from tessera_pipeline.encode.fixed_engine import FixedShapeEngine
from tessera_pipeline.encode.normalisation import V1_0, V1_1, DataSource, NormStats
from tessera_pipeline.encode.quantise import quantise
from tessera_pipeline.encode.result import EncodedTile, EncodeStats
from tessera_pipeline.errors import EncodeError
from tessera_pipeline.hardware import keep_freed_memory
from tessera_pipeline.inputs.tile import DPixelTile
from tessera_pipeline.model.architecture import BackboneConfig, TransformerEncoder
from tessera_pipeline.model.checkpoint import LoadedModel
from tessera_pipeline.model.flops import backbone_flops, reducer_flops
from tessera_pipeline.model.packed import Pack, PackedBackbone
from tessera_pipeline.precision import DEVICE_MEMORY_BUDGET, FP16_GUARD_LIMIT, Precision

log = logging.getLogger(__name__)

Kernels = Literal["packed", "module", "fixed"]
#: Compute dtype of each precision (GEMM and attention inputs; see docs/encoder.md for what stays float32).
COMPUTE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: A pack holds about batch_size * TOKENS_PER_PIXEL tokens (pixels x their bucket lengths).
TOKENS_PER_PIXEL = 64
Stream = Literal["s2", "s1"]
#: Builds a stream's model input (n, length, bands+1) for chunk pixels that share one length.
InputBuilder = Callable[[prepare.Chunk, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class EncodeSettings:
    """How to run the model: precision, pack size, pixels per streamed chunk, RNG seed, kernels.

    `batch_size` is in pixels of 64 tokens: a pack holds up to batch_size * 64 tokens, so short
    sequences pack more pixels and long ones fewer, and every full pack has the same GEMM shape.

    `kernels="packed"` (default) runs mixed-length packs through fused GEMMs (the CPU path);
    `"module"` runs the plain torch modules per bucket under autocast (the reference path);
    `"fixed"` runs fixed-shape packs with device-side inputs (the accelerator path), optionally
    replayed as CUDA graphs (`cuda_graphs`), streaming the tile through the device in blocks sized to
    keep its memory within `device_budget` bytes (None: the whole tile resident; same bytes either way).
    `fused_kernels` runs the fixed path's residual + LayerNorm and GRU steps as Triton kernels
    (`model.fused_kernels`; None: wherever Triton runs, i.e. on CUDA devices with Triton installed).
    """

    precision: Precision = "fp32"
    batch_size: int = 256
    data_source: DataSource = "mpc"
    chunk_pixels: int = 32768
    seed: int = 0
    device: str = "cpu"
    kernels: Kernels = "packed"
    cuda_graphs: bool = False
    device_budget: int | None = DEVICE_MEMORY_BUDGET
    fused_kernels: bool | None = None


def pack_slices(sorted_lengths: np.ndarray, token_budget: int) -> list[slice]:
    """Cut pixels (sorted longest first) into consecutive packs of at most `token_budget` tokens each.

    Greedy and loop-per-pack (not per pixel); a pixel longer than the budget gets a pack of its own.
    """
    cumulative = np.cumsum(sorted_lengths)
    slices, start, base = [], 0, 0
    while start < len(sorted_lengths):
        end = max(int(np.searchsorted(cumulative, base + token_budget, side="right")), start + 1)
        slices.append(slice(start, end))
        base = int(cumulative[end - 1])
        start = end
    return slices


class TileEncoder:
    """Holds a loaded model (load once, encode many tiles) and encodes tiles under one precision policy."""

    def __init__(self, loaded: LoadedModel, settings: EncodeSettings | None = None) -> None:
        self.loaded = loaded
        self.settings = settings or EncodeSettings()
        self.device = torch.device(self.settings.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.model = loaded.model.to(self.device).eval()
        self.version = loaded.config.version
        self.norm: NormStats = V1_1[self.settings.data_source] if self.version == "v1.1" else V1_0
        self._modules: dict[Stream, TransformerEncoder] = {"s2": self.model.s2_backbone, "s1": self.model.s1_backbone}
        self._configs: dict[Stream, BackboneConfig] = {"s2": loaded.config.s2, "s1": loaded.config.s1}
        self._packed: dict[Stream, PackedBackbone] = {}
        dtype = COMPUTE_DTYPES[self.settings.precision]
        self._packed32: dict[Stream, PackedBackbone] = {}
        if self.settings.kernels == "packed":
            fused = None if dtype != torch.float16 else False
            batch = self.settings.batch_size
            self._packed = {s: PackedBackbone(m, dtype, fused=fused, pack_pixels=batch, pack_tokens=batch * TOKENS_PER_PIXEL)
                            for s, m in self._modules.items()}
        self._engine: FixedShapeEngine | None = None
        if self.settings.kernels == "fixed":
            self._engine = FixedShapeEngine(
                loaded, dtype=dtype, device=self.device, norm=self.norm, token_budget=self.settings.batch_size * TOKENS_PER_PIXEL,
                chunk_pixels=self.settings.chunk_pixels, seed=self.settings.seed, cuda_graphs=self.settings.cuda_graphs,
                budget=self.settings.device_budget, fused=self.settings.fused_kernels,
            )
        self._empty: dict[Stream, torch.Tensor] = {}

    @property
    def uses_fused_kernels(self) -> bool:
        """Whether linears run through oneDNN's fused ops (packed kernels on a CPU build that has them)."""
        return bool(self._packed) and self._packed["s2"].fused

    @property
    def triton_kernels(self) -> bool:
        """Whether the fixed path runs residual + LayerNorm and the GRU steps as Triton kernels."""
        return self._engine is not None and self._engine.backbones["s2"].fused

    def autocast(self, fp32: bool = False) -> torch.autocast:
        """The module path's precision policy: bf16/fp16 autocast for GEMMs and attention, or plain fp32."""
        enabled = self.settings.precision != "fp32" and self.settings.kernels == "module" and not fp32
        return torch.autocast(self.device.type, dtype=COMPUTE_DTYPES[self.settings.precision], enabled=enabled)

    def _guarded(self, compute: Callable[[bool], torch.Tensor], stats: EncodeStats, width: int | None = None) -> torch.Tensor:
        """`compute(False)`; under fp16, `compute(True)` (float32) instead when its first `width` columns overflowed (counted)."""
        out = compute(False)
        if self.settings.precision == "fp16" and not bool(out[:, :width].abs().amax() <= FP16_GUARD_LIMIT):
            stats.fp32_reruns += 1
            out = compute(True)
        return out

    def _packed_backbone(self, stream: Stream, fp32: bool) -> PackedBackbone:
        """The packed path's backbone in the compute dtype, or in float32 for the fp16 guard (built on first use)."""
        if not fp32:
            return self._packed[stream]
        if stream not in self._packed32:
            self._packed32[stream] = PackedBackbone(self._modules[stream], torch.float32)
        return self._packed32[stream]

    def close(self) -> None:
        """Release what the encoder holds beyond its weights (the fixed path's prefetch thread)."""
        if self._engine is not None:
            self._engine.close()

    def warm_up(self) -> None:
        """Run every kernel of the fixed path once (and compute its constants), so the first tile starts warm."""
        if self._engine is not None:
            self._engine.warm_up()

    def _forward(self, stream: Stream, groups: list[np.ndarray], pack: Pack, fp32: bool = False) -> torch.Tensor:
        """Pooled (P, D) float32 vectors of a pack whose inputs come as one (n, length, C) array per group."""
        with torch.inference_mode(), self.autocast(fp32):
            if self._packed:
                tokens = np.concatenate([g.reshape(-1, g.shape[-1]) for g in groups])
                return self._packed_backbone(stream, fp32)(torch.from_numpy(tokens).to(self.device), pack)
            module = self._modules[stream]
            return torch.cat([module(torch.from_numpy(g).to(self.device)).float() for g in groups])

    def _run_pack(self, stream: Stream, chunk: prepare.Chunk, pixels: np.ndarray, lengths: np.ndarray, build: InputBuilder,
                  stats: EncodeStats) -> torch.Tensor:
        """Pooled vectors for pixels sorted longest first, their inputs built group by group (fp16: guarded)."""
        pack = Pack.from_lengths(lengths)
        groups = [build(chunk, pixels[first : first + count], length) for first, count, length, _ in pack.groups]
        return self._guarded(lambda fp32: self._forward(stream, groups, pack, fp32), stats)

    def _empty_pooled(self, stream: Stream) -> torch.Tensor:
        """The pooled vector of a v1.1 stream with no valid observation (8 zero tokens), computed once."""
        if stream not in self._empty:
            length = prepare.V1_1_BUCKETS[0]
            zeros = np.zeros((1, length, self._configs[stream].bands + 1), np.float32)
            pack = Pack.from_lengths(np.array([length]))
            self._empty[stream] = self._guarded(lambda fp32: self._forward(stream, [zeros], pack, fp32), EncodeStats())[0]
        return self._empty[stream]

    def _pool_stream(
        self, stream: Stream, chunk: prepare.Chunk, pixels: np.ndarray, lengths: np.ndarray, build: InputBuilder, stats: EncodeStats
    ) -> torch.Tensor:
        """Pooled vectors of `pixels` (any order) for one stream, in packs of up to batch_size x 64 tokens."""
        cfg = self._configs[stream]
        out = torch.empty(len(pixels), cfg.d_model, dtype=torch.float32, device=self.device)
        order = np.argsort(-lengths, kind="stable")
        histogram = stats.s2_tokens if stream == "s2" else stats.s1_tokens
        for length, count in zip(*np.unique(lengths, return_counts=True)):
            histogram[int(length)] = histogram.get(int(length), 0) + int(count)
        for sel in pack_slices(lengths[order], self.settings.batch_size * TOKENS_PER_PIXEL):
            pick = order[sel]
            t0 = time.perf_counter()
            out[torch.from_numpy(pick).to(self.device)] = self._run_pack(stream, chunk, pixels[pick], lengths[pick], build, stats)
            stats.model_s += time.perf_counter() - t0
            stats.flops += float(sum(backbone_flops(cfg, int(n)) * int(c) for n, c in zip(*np.unique(lengths[pick], return_counts=True))))
        return out

    def _reduce(self, s2: torch.Tensor, s1: torch.Tensor, stats: EncodeStats) -> torch.Tensor:
        """Fuse pooled vectors into full representations (N, representation_dim) float32."""
        t0 = time.perf_counter()
        low = self.settings.precision != "fp32"

        def reduce(i: int, fp32: bool) -> torch.Tensor:
            dtype = COMPUTE_DTYPES[self.settings.precision]
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=low and not fp32):
                return self.model.reduce(s2[i : i + 4096], s1[i : i + 4096])

        saved = self.loaded.config.saved_dims
        reps = [self._guarded(lambda fp32: reduce(i, fp32), stats, saved) for i in range(0, s2.shape[0], 4096)]  # noqa: B023
        stats.model_s += time.perf_counter() - t0
        stats.flops += s2.shape[0] * reducer_flops(self.loaded.config)
        if not reps:
            return torch.zeros(0, self.loaded.config.representation_dim, device=self.device)
        return torch.cat(reps)

    def _v1_1_stream(self, stream: Stream, chunk: prepare.Chunk, stats: EncodeStats) -> torch.Tensor:
        """Every chunk pixel's pooled vector for one v1.1 stream; empty streams take the constant."""
        valid = chunk.s2_valid if stream == "s2" else chunk.s1_valid
        raw = prepare.v1_1_s2_input if stream == "s2" else prepare.v1_1_s1_input
        n_valid = valid.sum(axis=1)
        lengths = prepare.bucket_lengths(n_valid)
        out = torch.empty(chunk.n_pixels, self._configs[stream].d_model, dtype=torch.float32, device=self.device)
        empty = n_valid == 0
        if empty.any():
            out[torch.from_numpy(empty).to(self.device)] = self._empty_pooled(stream)
            setattr(stats, f"empty_{stream}", getattr(stats, f"empty_{stream}") + int(empty.sum()))
        todo = np.flatnonzero(~empty)
        if todo.size:
            build: InputBuilder = lambda c, p, n: raw(c, p, n, self.norm)  # noqa: E731
            out[torch.from_numpy(todo).to(self.device)] = self._pool_stream(stream, chunk, todo, lengths[todo], build, stats)
        return out

    def embed_chunk(self, chunk: prepare.Chunk, stats: EncodeStats | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """Chunk pixel indices the model encodes and their full float32 representations (before quantisation)."""
        stats = stats if stats is not None else EncodeStats()
        if self._engine is not None:
            with torch.inference_mode():
                return self._engine.embed(chunk_as_tile(chunk), stats)
        if self.version == "v1.1":
            where = np.arange(chunk.n_pixels)
            s2 = self._v1_1_stream("s2", chunk, stats)
            s1 = self._v1_1_stream("s1", chunk, stats)
        else:
            where = np.flatnonzero(prepare.v1_0_keep(chunk))
            stats.skipped_pixels += chunk.n_pixels - len(where)
            lengths = np.full(len(where), prepare.V1_0_SAMPLES)
            seed = self.settings.seed
            s2 = self._pool_stream("s2", chunk, where, lengths, lambda c, p, n: prepare.v1_0_s2_input(c, p, self.norm, seed), stats)
            s1 = self._pool_stream("s1", chunk, where, lengths, lambda c, p, n: prepare.v1_0_s1_input(c, p, self.norm, seed), stats)
        return where, self._reduce(s2, s1, stats)

    def _encode_chunk(self, chunk: prepare.Chunk, stats: EncodeStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(chunk pixel indices encoded, their int8 codes, their scales): the saved dims, quantised per pixel."""
        where, reps = self.embed_chunk(chunk, stats)
        with torch.inference_mode():
            codes, scales = quantise(reps[:, : self.loaded.config.saved_dims])
        return where, codes.cpu().numpy(), scales.cpu().numpy()

    def encode(self, tile: DPixelTile, *, progress: Callable[[int], None] | None = None) -> EncodedTile:
        """Encode a whole tile in row chunks; `progress` is called with the pixels finished per chunk."""
        h, w = tile.height, tile.width
        embeddings = np.zeros((h, w, self.loaded.config.saved_dims), dtype=np.int8)
        scales = np.zeros((h, w), dtype=np.float32)
        flat_emb = embeddings.reshape(h * w, -1)
        flat_scales = scales.reshape(h * w)
        stats = EncodeStats(pixels=h * w)
        if self._engine is not None:
            started = time.perf_counter()
            where, codes, tile_scales = self._engine.encode_arrays(tile, stats, progress)
            flat_emb[where], flat_scales[where] = codes, tile_scales
            stats.total_s = time.perf_counter() - started
            stats.model_s = stats.total_s
            log.info("encoded %s: %d px in %.1f s (%.0f px/s, fixed packs on %s)", tile.name, h * w, stats.total_s, h * w / max(stats.total_s, 1e-9), self.device)
            return EncodedTile(name=tile.name, embeddings=embeddings, scales=scales, stats=stats)
        rows = max(1, self.settings.chunk_pixels // max(w, 1))
        started = time.perf_counter()
        for row0 in range(0, h, rows):
            row1 = min(h, row0 + rows)
            t0 = time.perf_counter()
            try:
                chunk = prepare.read_chunk(tile, row0, row1)
            except (OSError, ValueError) as exc:
                raise EncodeError(f"reading rows {row0}:{row1} failed ({exc})", tile=tile.name) from exc
            stats.prepare_s += time.perf_counter() - t0
            where, codes, chunk_scales = self._encode_chunk(chunk, stats)
            flat_emb[chunk.pixel_index[where]] = codes
            flat_scales[chunk.pixel_index[where]] = chunk_scales
            if progress is not None:
                progress(chunk.n_pixels)
        stats.total_s = time.perf_counter() - started
        stats.prepare_s = max(0.0, stats.total_s - stats.model_s)
        log.info("encoded %s: %d px in %.1f s (%.2f ms/px)", tile.name, h * w, stats.total_s, 1e3 * stats.total_s / max(h * w, 1))
        return EncodedTile(name=tile.name, embeddings=embeddings, scales=scales, stats=stats)


def chunk_as_tile(chunk: prepare.Chunk) -> DPixelTile:
    """A prepared chunk as a 1-row tile in upstream's (T, H, W, C) layout (for the fixed path's `embed_chunk`).

    Pixel ids restart at 0, so v1.0's per-pixel sampling matches the CPU path only for a chunk that starts the tile.
    """
    na = chunk.n_ascending
    s1 = chunk.s1.transpose(1, 0, 2)[:, None]
    return DPixelTile(
        name="chunk",
        bands=chunk.s2.transpose(1, 0, 2)[:, None],
        masks=chunk.s2_valid.T.astype(np.uint8)[:, None],
        doys=chunk.s2_doy.astype(np.uint16),
        sar_ascending=s1[:na],
        sar_descending=s1[na:],
        sar_ascending_doy=chunk.s1_doy[:na].astype(np.int16),
        sar_descending_doy=chunk.s1_doy[na:].astype(np.int16),
    )
