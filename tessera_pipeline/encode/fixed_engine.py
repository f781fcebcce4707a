"""Throughput encoding for accelerators (`kernels="fixed"`): fixed-shape packs, inputs built on the device.

How a tile flows:

1. A background thread reads row blocks of the memory-mapped arrays into pinned host memory and
   counts each pixel's valid observations (the only per-pixel host work); the main thread uploads a
   block on a side stream while the GPU computes earlier packs, then turns it pixel-major on the device.
2. Each stream's pixels wait in a queue per bucket length L. A queue that holds a full pack
   (`PackPlan.full(L)` pixels, about `token_budget` tokens) runs it at once; at the end of the tile
   each remaining queue runs one tail pack padded up to the next of a few fixed sizes. So every
   tensor shape comes from a small fixed set and the first tile runs as fast as the tenth.
3. A pack's tokens are gathered and standardised on the device (`device_prep`, v1.1; v1.0's sampled
   inputs are built on the host as on the CPU path), run through `model.fixed.FixedBackbone`
   (optionally replayed as one CUDA graph per shape), and the pooled vectors land in tile-wide
   float32 buffers on the device.
4. Empty v1.1 streams take the constant pooled vector; the reducer and the quantisation run on the
   device; only int8 codes and scales come back.

No host synchronisation happens between the first upload and the final copy of codes to the host.
The same code runs on a CPU device (without streams or pinned memory), which is how it is tested.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from tessera_pipeline.encode import device_prep, prepare
from tessera_pipeline.encode.normalisation import NormStats
from tessera_pipeline.encode.quantise import quantise
from tessera_pipeline.encode.result import EncodeStats
from tessera_pipeline.errors import EncodeError
from tessera_pipeline.inputs.tile import DPixelTile
from tessera_pipeline.model.checkpoint import LoadedModel
from tessera_pipeline.model.fixed import FixedBackbone, FixedReducer, GraphedBackbone
from tessera_pipeline.model.flops import backbone_flops, reducer_flops

log = logging.getLogger(__name__)

Stream = Literal["s2", "s1"]
STREAMS: tuple[Stream, ...] = ("s2", "s1")
#: Pixels reduced and quantised per step at the end of a tile.
REDUCE_PIXELS = 131072


@dataclass(frozen=True)
class PackPlan:
    """The fixed pack sizes: per bucket length L, a full pack of about `token_budget` tokens and its halvings.

    A full pack holds `full(L)` pixels (a multiple of `quantum`, at most `max_pixels`, the limit of
    one attention launch's batch). A tail of n pixels is padded to `tail(L, n)`, the smallest of
    full, full/2, full/4, ... (down to `quantum`) that holds it: at most twice the tail, and at most
    about log2(full/quantum) + 1 shapes per length.
    """

    token_budget: int
    max_pixels: int = 16384
    quantum: int = 8

    def full(self, length: int) -> int:
        """Pixels in a full pack of bucket length `length`."""
        pixels = min(self.max_pixels, max(self.quantum, self.token_budget // max(length, 1)))
        return max(self.quantum, pixels // self.quantum * self.quantum)

    def sizes(self, length: int) -> tuple[int, ...]:
        """Every pack size used for `length`, largest first."""
        out, size = [], self.full(length)
        while True:
            out.append(size)
            if size <= self.quantum:
                return tuple(out)
            size = max(self.quantum, -(-size // 2 // self.quantum) * self.quantum)

    def tail(self, length: int, pixels: int) -> int:
        """The smallest pack size for `length` that holds `pixels` pixels."""
        return min(s for s in self.sizes(length) if s >= pixels)


@dataclass
class _Pending:
    """Pixels of one (stream, length) waiting for a pack: tile pixel ids and, when built on the host, tokens."""

    ids: list[np.ndarray] = field(default_factory=list)
    tokens: list[torch.Tensor] = field(default_factory=list)
    count: int = 0

    def push(self, ids: np.ndarray, tokens: torch.Tensor | None = None) -> None:
        self.ids.append(ids)
        if tokens is not None:
            self.tokens.append(tokens)
        self.count += len(ids)

    def take(self, n: int) -> tuple[np.ndarray, torch.Tensor | None]:
        """Remove and return the first n pixels (ids, and tokens if any)."""
        ids = np.concatenate(self.ids) if len(self.ids) > 1 else self.ids[0]
        tokens = (torch.cat(self.tokens) if len(self.tokens) > 1 else self.tokens[0]) if self.tokens else None
        self.ids = [ids[n:]] if len(ids) > n else []
        self.tokens = [tokens[n:]] if tokens is not None and len(ids) > n else []
        self.count = len(ids) - min(n, len(ids))
        return ids[:n], (tokens[:n] if tokens is not None else None)


@dataclass
class _HostBlock:
    """A row block read on the host: first tile pixel, pixel count, per-stream lengths and payload."""

    first: int
    n: int
    read_s: float
    lengths: dict[Stream, np.ndarray]
    raw: dict[Stream, torch.Tensor] = field(default_factory=dict)  # v1.1: time-major (T, n, C)
    mask: torch.Tensor | None = None  # v1.1: (T, n) uint8
    keep: np.ndarray | None = None  # v1.0: block-local indices of encoded pixels
    tokens: dict[Stream, torch.Tensor] = field(default_factory=dict)  # v1.0: (P, 40, C) float32


class FixedShapeEngine:
    """Encodes tiles on one device with fixed-shape packs; built once per encoder, reused for every tile."""

    def __init__(self, loaded: LoadedModel, *, dtype: torch.dtype, device: torch.device, norm: NormStats,
                 token_budget: int, chunk_pixels: int, seed: int, cuda_graphs: bool = False) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.version = self.cfg.version
        self.device = device
        self.dtype = dtype
        self.norm = norm
        self.seed = seed
        self.chunk_pixels = chunk_pixels
        self.plan = PackPlan(token_budget)
        model = loaded.model
        self.backbones: dict[Stream, FixedBackbone] = {
            "s2": FixedBackbone(model.s2_backbone, dtype), "s1": FixedBackbone(model.s1_backbone, dtype)
        }
        self.reducer = FixedReducer(model, dtype)
        self.cuda = device.type == "cuda"
        self.graphed: dict[Stream, GraphedBackbone] = {}
        if cuda_graphs and self.cuda:
            max_tokens = max(self.plan.full(n) * n for n in range(1, device_prep.MAX_BUCKET + 1))
            self.graphed = {s: GraphedBackbone(b, max_tokens) for s, b in self.backbones.items()}
        self.upload_stream = torch.cuda.Stream(device=device) if self.cuda else None
        self._empty: dict[Stream, torch.Tensor] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tessera-prefetch")

    # --- set-up ---------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Compute the empty-stream constants and run each kernel once, so the first tile starts warm."""
        with torch.inference_mode(), self._on_device():
            for stream in STREAMS:
                self._empty_pooled(stream)
                length = prepare.V1_1_BUCKETS[0] if self.version == "v1.1" else prepare.V1_0_SAMPLES
                if stream in self.graphed:
                    self.graphed[stream].warm_up(self.plan.quantum, length)
            self.reducer(self._empty["s2"][None], self._empty["s1"][None])
            if self.cuda:
                torch.cuda.synchronize(self.device)

    def _on_device(self) -> torch.cuda.device | _NullContext:
        return torch.cuda.device(self.device) if self.cuda else _NullContext()

    def _empty_pooled(self, stream: Stream) -> torch.Tensor:
        """Pooled vector of a stream with no valid observation: 8 zero tokens, DOY 0 (computed once)."""
        if stream not in self._empty:
            length = prepare.V1_1_BUCKETS[0]
            bands = torch.zeros(length, self.backbones[stream].cfg.bands, dtype=torch.float32, device=self.device)
            doy = torch.zeros(length, dtype=torch.int64, device=self.device)
            self._empty[stream] = self.backbones[stream](bands, doy, 1, length)[0].clone()
        return self._empty[stream]

    # --- host side ------------------------------------------------------------------------

    def _pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self.cuda)

    def _read_v1_1(self, tile: DPixelTile, row0: int, row1: int) -> _HostBlock:
        """Copy rows into (pinned) host buffers, time-major, and count valid observations per pixel."""
        t0 = time.perf_counter()
        n = (row1 - row0) * tile.width
        t2, ta, td = tile.bands.shape[0], tile.sar_ascending.shape[0], tile.sar_descending.shape[0]
        s2 = self._pinned((t2, n, tile.bands.shape[-1]), torch.int16)
        mask = self._pinned((t2, n), torch.uint8)
        s1 = self._pinned((ta + td, n, 2), torch.int16)
        np.copyto(s2.numpy(), np.asarray(tile.bands[:, row0:row1]).reshape(t2, n, -1).view(np.int16))
        np.copyto(mask.numpy(), np.asarray(tile.masks[:, row0:row1]).reshape(t2, n).view(np.uint8))
        s1_np = s1.numpy()
        np.copyto(s1_np[:ta], np.asarray(tile.sar_ascending[:, row0:row1]).reshape(ta, n, 2))
        np.copyto(s1_np[ta:], np.asarray(tile.sar_descending[:, row0:row1]).reshape(td, n, 2))
        n_s2 = np.count_nonzero(mask.numpy(), axis=0)
        n_s1 = (s1_np != 0).any(axis=-1).sum(axis=0)
        lengths = {"s2": np.where(n_s2 > 0, prepare.bucket_lengths(n_s2), 0), "s1": np.where(n_s1 > 0, prepare.bucket_lengths(n_s1), 0)}
        return _HostBlock(row0 * tile.width, n, time.perf_counter() - t0, lengths, raw={"s2": s2, "s1": s1}, mask=mask)

    def _read_v1_0(self, tile: DPixelTile, row0: int, row1: int) -> _HostBlock:
        """v1.0: filter pixels and sample their 40 observations on the host, exactly as the CPU path."""
        t0 = time.perf_counter()
        chunk = prepare.read_chunk(tile, row0, row1)
        keep = np.flatnonzero(prepare.v1_0_keep(chunk))
        tokens = {
            "s2": prepare.v1_0_s2_input(chunk, keep, self.norm, self.seed),
            "s1": prepare.v1_0_s1_input(chunk, keep, self.norm, self.seed),
        }
        lengths = {s: np.full(len(keep), prepare.V1_0_SAMPLES) for s in STREAMS}
        pinned = {s: self._pin(torch.from_numpy(t)) for s, t in tokens.items()}
        return _HostBlock(int(chunk.pixel_index[0]), chunk.n_pixels, time.perf_counter() - t0, lengths, keep=keep, tokens=pinned)

    def _pin(self, t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory() if self.cuda else t

    def _blocks(self, tile: DPixelTile) -> Iterator[_HostBlock]:
        """Row blocks read one ahead in a background thread."""
        rows = max(1, self.chunk_pixels // max(tile.width, 1))
        read = self._read_v1_1 if self.version == "v1.1" else self._read_v1_0
        starts = list(range(0, tile.height, rows))
        nxt: Future[_HostBlock] | None = self._pool.submit(read, tile, starts[0], min(tile.height, rows)) if starts else None
        for i in range(len(starts)):
            assert nxt is not None
            try:
                block = nxt.result()
            except (OSError, ValueError) as exc:
                r0 = starts[i]
                raise EncodeError(f"reading rows {r0}:{min(tile.height, r0 + rows)} failed ({exc})", tile=tile.name) from exc
            if i + 1 < len(starts):
                r0 = starts[i + 1]
                nxt = self._pool.submit(read, tile, r0, min(tile.height, r0 + rows))
            yield block

    # --- device side ----------------------------------------------------------------------

    def _upload(self, block: _HostBlock, arrays: dict[Stream, device_prep.StreamArrays]) -> None:
        """Copy a v1.1 block to the device (side stream on CUDA) and store it pixel-major."""
        ctx = torch.cuda.stream(self.upload_stream) if self.upload_stream is not None else _NullContext()
        with ctx:
            mask = block.mask.to(self.device, non_blocking=True) if block.mask is not None else None
            for stream in STREAMS:
                raw = block.raw[stream].to(self.device, non_blocking=True)
                device_prep.store_block(arrays[stream], block.first, raw, mask if stream == "s2" else None)
        if self.upload_stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.upload_stream)

    def _to_device(self, ids: np.ndarray) -> torch.Tensor:
        return self._pin(torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))).to(self.device, non_blocking=True)

    def _run_pack(self, stream: Stream, length: int, size: int, queue: _Pending, pooled: torch.Tensor,
                  arrays: dict[Stream, device_prep.StreamArrays] | None, stats: EncodeStats) -> None:
        """Run one pack of `size` pixels (padded with copies of its first pixel) from a queue."""
        ids, tokens = queue.take(size)
        real = len(ids)
        pad = size - real
        if pad:
            ids = np.concatenate([ids, np.full(pad, ids[0], dtype=ids.dtype)])
        ids_dev = self._to_device(ids)
        if tokens is None:
            assert arrays is not None
            bands, doy = device_prep.gather_tokens(arrays[stream], ids_dev, length)
        else:
            if pad:
                tokens = torch.cat([tokens, tokens[:1].expand(pad, *tokens.shape[1:])])
            bands = tokens[..., :-1].reshape(size * length, -1)
            doy = tokens[..., -1].reshape(-1).long().clamp_(0, 366)
        run = self.graphed.get(stream, self.backbones[stream])
        out = run(bands, doy, size, length)
        pooled.index_copy_(0, ids_dev[:real], out[:real])
        stats.flops += backbone_flops(self.backbones[stream].cfg, length) * real
        hist = stats.s2_tokens if stream == "s2" else stats.s1_tokens
        hist[length] = hist.get(length, 0) + real

    def _drain(self, queues: dict[tuple[Stream, int], _Pending], pooled: dict[Stream, torch.Tensor],
               arrays: dict[Stream, device_prep.StreamArrays] | None, stats: EncodeStats, *, tails: bool) -> None:
        """Run every full pack waiting; with `tails`, then each queue's remainder as one padded pack."""
        for (stream, length), queue in sorted(queues.items()):
            full = self.plan.full(length)
            while queue.count >= full:
                self._run_pack(stream, length, full, queue, pooled[stream], arrays, stats)
            if tails and queue.count:
                self._run_pack(stream, length, self.plan.tail(length, queue.count), queue, pooled[stream], arrays, stats)

    def embed(self, tile: DPixelTile, stats: EncodeStats, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(tile pixel ids encoded, their full float32 representations on the device)."""
        n_pixels = tile.height * tile.width
        d = {s: self.backbones[s].cfg.d_model for s in STREAMS}
        pooled = {s: torch.empty(n_pixels, d[s], dtype=torch.float32, device=self.device) for s in STREAMS}
        arrays: dict[Stream, device_prep.StreamArrays] | None = None
        if self.version == "v1.1":
            n_asc = int(tile.sar_ascending.shape[0])
            s1_doy = np.concatenate([np.asarray(tile.sar_ascending_doy), np.asarray(tile.sar_descending_doy)])
            arrays = {
                "s2": device_prep.allocate_stream("s2", n_pixels, np.asarray(tile.doys), self.cfg.s2.bands, self.norm, self.device),
                "s1": device_prep.allocate_stream("s1", n_pixels, s1_doy, self.cfg.s1.bands, self.norm, self.device, n_asc),
            }
        if self.upload_stream is not None:
            self.upload_stream.wait_stream(torch.cuda.current_stream(self.device))
        queues: dict[tuple[Stream, int], _Pending] = {}
        empties: dict[Stream, list[np.ndarray]] = {s: [] for s in STREAMS}
        encoded: list[np.ndarray] = []
        for block in self._blocks(tile):
            stats.prepare_s += block.read_s
            if arrays is not None:
                self._upload(block, arrays)
                local = np.arange(block.n)
            else:
                assert block.keep is not None
                local = block.keep
                stats.skipped_pixels += block.n - len(local)
            ids = block.first + local
            encoded.append(ids)
            for stream in STREAMS:
                lengths = block.lengths[stream]
                tokens = block.tokens[stream].to(self.device, non_blocking=True) if block.tokens else None
                empty = lengths == 0
                if empty.any():
                    empties[stream].append(ids[empty])
                    setattr(stats, f"empty_{stream}", getattr(stats, f"empty_{stream}") + int(empty.sum()))
                for length in np.unique(lengths[~empty]).tolist():
                    sel = np.flatnonzero(lengths == length)
                    queue = queues.setdefault((stream, int(length)), _Pending())
                    queue.push(ids[sel], tokens[torch.from_numpy(sel).to(self.device)] if tokens is not None else None)
            self._drain(queues, pooled, arrays, stats, tails=False)
            if progress is not None:
                progress(block.n)
        self._drain(queues, pooled, arrays, stats, tails=True)
        for stream in STREAMS:
            if empties[stream]:
                pooled[stream][self._to_device(np.concatenate(empties[stream]))] = self._empty_pooled(stream)
        where = np.concatenate(encoded) if encoded else np.zeros(0, dtype=np.int64)
        if self.version == "v1.1":
            return where, self._reduce(pooled["s2"], pooled["s1"], stats)
        idx = self._to_device(where)
        return where, self._reduce(pooled["s2"].index_select(0, idx), pooled["s1"].index_select(0, idx), stats)

    def _reduce(self, s2: torch.Tensor, s1: torch.Tensor, stats: EncodeStats) -> torch.Tensor:
        """Full representations of pooled pairs, in slices of REDUCE_PIXELS."""
        stats.flops += s2.shape[0] * reducer_flops(self.cfg)
        reps = torch.empty(s2.shape[0], self.cfg.representation_dim, dtype=torch.float32, device=self.device)
        for i in range(0, s2.shape[0], REDUCE_PIXELS):
            reps[i : i + REDUCE_PIXELS] = self.reducer(s2[i : i + REDUCE_PIXELS], s1[i : i + REDUCE_PIXELS])
        return reps

    def encode_arrays(self, tile: DPixelTile, stats: EncodeStats, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tile pixel ids encoded, int8 codes, float32 scales) on the host: the saved dims, quantised per pixel."""
        with torch.inference_mode(), self._on_device():
            where, reps = self.embed(tile, stats, progress)
            codes = torch.empty(reps.shape[0], self.cfg.saved_dims, dtype=torch.int8, device=self.device)
            scales = torch.empty(reps.shape[0], dtype=torch.float32, device=self.device)
            for i in range(0, reps.shape[0], REDUCE_PIXELS):
                codes[i : i + REDUCE_PIXELS], scales[i : i + REDUCE_PIXELS] = quantise(reps[i : i + REDUCE_PIXELS, : self.cfg.saved_dims])
            return where, codes.cpu().numpy(), scales.cpu().numpy()

    def close(self) -> None:
        """Stop the prefetch thread."""
        self._pool.shutdown(wait=False)


class _NullContext:
    """A do-nothing context manager (CPU devices have no streams)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


__all__ = ["FixedShapeEngine", "PackPlan"]
