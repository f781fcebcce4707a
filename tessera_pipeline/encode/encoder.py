"""Layer 4: one d-pixel tile in, int8 (H, W, 128) embeddings and float32 (H, W) scales out.

The tile is streamed in row chunks (only one chunk's raw arrays are decoded at a time). Each
stream is bucketed by its own length (the two backbones are independent until the concat, so this
is exact and needs fewer shapes than upstream's (s2, s1) pairs); pooled vectors are fused by the
reducer per pixel, then quantised per pixel. Empty streams (v1.1: no valid observation) give a
constant pooled vector, computed once per encoder. No Ray and no storage here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tessera_pipeline.encode import prepare
from tessera_pipeline.encode.normalisation import V1_0, V1_1, DataSource, NormStats
from tessera_pipeline.encode.quantise import quantise
from tessera_pipeline.errors import EncodeError
from tessera_pipeline.hardware import Precision
from tessera_pipeline.inputs.tile import DPixelTile
from tessera_pipeline.model.architecture import TesseraModel, TransformerEncoder
from tessera_pipeline.model.checkpoint import LoadedModel
from tessera_pipeline.model.flops import backbone_flops, reducer_flops

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeSettings:
    """How to run the model: precision, pixels per forward batch, rows streamed per chunk, RNG seed."""

    precision: Precision = "fp32"
    batch_size: int = 256
    data_source: DataSource = "mpc"
    chunk_pixels: int = 32768
    seed: int = 0
    device: str = "cpu"


@dataclass
class EncodeStats:
    """What one encode did: pixels by kind, FLOPs actually computed, wall time by phase."""

    pixels: int = 0
    skipped_pixels: int = 0
    empty_s2: int = 0
    empty_s1: int = 0
    flops: float = 0.0
    prepare_s: float = 0.0
    model_s: float = 0.0
    total_s: float = 0.0
    s2_tokens: dict[int, int] = field(default_factory=dict)
    s1_tokens: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodedTile:
    """An encoded tile in upstream's output format, plus run statistics."""

    name: str
    embeddings: np.ndarray  # int8 (H, W, 128)
    scales: np.ndarray  # float32 (H, W)
    stats: EncodeStats


InputBuilder = Callable[[prepare.Chunk, np.ndarray, int, NormStats], np.ndarray]


class TileEncoder:
    """Holds a loaded model (load once, encode many tiles) and encodes tiles under one precision policy."""

    def __init__(self, loaded: LoadedModel, settings: EncodeSettings | None = None) -> None:
        self.loaded = loaded
        self.settings = settings or EncodeSettings()
        self.device = torch.device(self.settings.device)
        self.model: TesseraModel = loaded.model.to(self.device).eval()
        self.version = loaded.config.version
        self.stats_table: NormStats = V1_1[self.settings.data_source] if self.version == "v1.1" else V1_0
        self._empty: dict[str, torch.Tensor] = {}

    def autocast(self) -> torch.autocast:
        """The precision policy as a context: bf16 autocast for GEMMs/attention, or plain fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.settings.precision == "bf16")

    def _forward(self, backbone: TransformerEncoder, x: np.ndarray) -> torch.Tensor:
        with torch.inference_mode(), self.autocast():
            return backbone(torch.from_numpy(x).to(self.device))

    def _empty_pooled(self, stream: str) -> torch.Tensor:
        """The pooled vector of a stream with no valid observation (v1.1: 8 zero tokens), computed once."""
        if stream not in self._empty:
            backbone = self.model.s2_backbone if stream == "s2" else self.model.s1_backbone
            width = backbone.cfg.bands + 1
            self._empty[stream] = self._forward(backbone, np.zeros((1, prepare.V1_1_BUCKETS[0], width), np.float32))[0]
        return self._empty[stream]

    def _pool_stream(self, chunk: prepare.Chunk, stream: str, stats: EncodeStats) -> torch.Tensor:
        """Pooled (N, D) vectors of one stream for every chunk pixel, batched per bucket length."""
        valid = chunk.s2_valid if stream == "s2" else chunk.s1_valid
        backbone = self.model.s2_backbone if stream == "s2" else self.model.s1_backbone
        build: InputBuilder = prepare.v1_1_s2_input if stream == "s2" else prepare.v1_1_s1_input
        tokens = stats.s2_tokens if stream == "s2" else stats.s1_tokens
        n_valid = valid.sum(axis=1)
        lengths = prepare.bucket_lengths(n_valid)
        out = torch.empty(chunk.n_pixels, backbone.cfg.d_model, dtype=torch.float32, device=self.device)
        empty = n_valid == 0
        if empty.any():
            out[torch.from_numpy(empty).to(self.device)] = self._empty_pooled(stream)
            setattr(stats, f"empty_{stream}", getattr(stats, f"empty_{stream}") + int(empty.sum()))
        for length in np.unique(lengths[~empty]):
            pixels = np.flatnonzero((lengths == length) & ~empty)
            tokens[int(length)] = tokens.get(int(length), 0) + len(pixels)
            for start in range(0, len(pixels), self.settings.batch_size):
                batch = pixels[start : start + self.settings.batch_size]
                t0 = time.perf_counter()
                x = build(chunk, batch, int(length), self.stats_table)
                t1 = time.perf_counter()
                out[torch.from_numpy(batch).to(self.device)] = self._forward(backbone, x)
                stats.prepare_s += t1 - t0
                stats.model_s += time.perf_counter() - t1
                stats.flops += len(batch) * backbone_flops(backbone.cfg, int(length))
        return out

    def _reduce(self, s2: torch.Tensor, s1: torch.Tensor, stats: EncodeStats) -> tuple[np.ndarray, np.ndarray]:
        """Fuse pooled vectors, keep the saved dims, quantise per pixel."""
        t0 = time.perf_counter()
        codes, scales = [], []
        with torch.inference_mode(), self.autocast():
            for start in range(0, s2.shape[0], 4096):
                rep = self.model.reduce(s2[start : start + 4096], s1[start : start + 4096])
                q, s = quantise(rep[:, : self.loaded.config.saved_dims])
                codes.append(q.cpu().numpy())
                scales.append(s.cpu().numpy())
        stats.model_s += time.perf_counter() - t0
        stats.flops += s2.shape[0] * reducer_flops(self.loaded.config)
        return np.concatenate(codes), np.concatenate(scales)

    def _encode_chunk_v1_1(self, chunk: prepare.Chunk, stats: EncodeStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s2 = self._pool_stream(chunk, "s2", stats)
        s1 = self._pool_stream(chunk, "s1", stats)
        codes, scales = self._reduce(s2, s1, stats)
        return np.arange(chunk.n_pixels), codes, scales

    def _encode_chunk_v1_0(self, chunk: prepare.Chunk, stats: EncodeStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = np.flatnonzero(prepare.v1_0_keep(chunk))
        stats.skipped_pixels += chunk.n_pixels - len(keep)
        cfg = self.loaded.config
        s2_out = torch.empty(len(keep), cfg.s2.d_model, device=self.device)
        s1_out = torch.empty(len(keep), cfg.s1.d_model, device=self.device)
        for start in range(0, len(keep), self.settings.batch_size):
            batch = keep[start : start + self.settings.batch_size]
            t0 = time.perf_counter()
            s2, s1 = prepare.v1_0_inputs(chunk, batch, self.stats_table, self.settings.seed)
            t1 = time.perf_counter()
            s2_out[start : start + len(batch)] = self._forward(self.model.s2_backbone, s2)
            s1_out[start : start + len(batch)] = self._forward(self.model.s1_backbone, s1)
            stats.prepare_s += t1 - t0
            stats.model_s += time.perf_counter() - t1
            stats.flops += len(batch) * (backbone_flops(cfg.s2, s2.shape[1]) + backbone_flops(cfg.s1, s1.shape[1]))
        codes, scales = self._reduce(s2_out, s1_out, stats)
        return keep, codes, scales

    def encode(self, tile: DPixelTile, *, progress: Callable[[int], None] | None = None) -> EncodedTile:
        """Encode a whole tile in row chunks; `progress` is called with the pixels finished per chunk."""
        h, w = tile.height, tile.width
        embeddings = np.zeros((h, w, self.loaded.config.saved_dims), dtype=np.int8)
        scales = np.zeros((h, w), dtype=np.float32)
        flat_emb = embeddings.reshape(h * w, -1)
        flat_scales = scales.reshape(h * w)
        stats = EncodeStats(pixels=h * w)
        rows = max(1, self.settings.chunk_pixels // max(w, 1))
        started = time.perf_counter()
        encode_chunk = self._encode_chunk_v1_1 if self.version == "v1.1" else self._encode_chunk_v1_0
        for row0 in range(0, h, rows):
            row1 = min(h, row0 + rows)
            t0 = time.perf_counter()
            try:
                chunk = prepare.read_chunk(tile, row0, row1)
            except (OSError, ValueError) as exc:
                raise EncodeError(f"reading rows {row0}:{row1} failed ({exc})", tile=tile.name) from exc
            stats.prepare_s += time.perf_counter() - t0
            where, codes, chunk_scales = encode_chunk(chunk, stats)
            flat_emb[chunk.pixel_index[where]] = codes
            flat_scales[chunk.pixel_index[where]] = chunk_scales
            if progress is not None:
                progress(chunk.n_pixels)
        stats.total_s = time.perf_counter() - started
        log.info("encoded %s: %d px in %.1f s (%.2f ms/px)", tile.name, h * w, stats.total_s, 1e3 * stats.total_s / max(h * w, 1))
        return EncodedTile(name=tile.name, embeddings=embeddings, scales=scales, stats=stats)
