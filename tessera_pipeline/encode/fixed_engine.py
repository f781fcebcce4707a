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
   (optionally replayed as one CUDA graph per shape), and the pooled vectors land in the slots of
   their pixels in a working set on the device.
4. Device memory is bounded by a budget, not by the tile (`encode.memory`): the working set holds the
   pixels still waiting in a queue plus up to a block of new ones. When the next block does not fit,
   every pixel whose two streams are pooled is reduced and quantised on the device (empty v1.1
   streams take the constant pooled vector), only its int8 codes and scale go to the host, and the
   waiting pixels move to the front. Pack composition is that of the whole tile at once and every
   reduce call has the same shape, so any budget gives the same bytes.
5. Under fp16 the guard checks each pack's pooled output and each reduce slice's saved dims for
   non-finite or saturated values (`FP16_GUARD_LIMIT`); a batch that overflowed runs again in float32,
   and `EncodeStats.fp32_reruns` counts it (recorded in the tile's provenance).

Under fp16 the host waits for the device once per flush (to read the packs' flags) and once per
reduce slice; otherwise no host synchronisation happens between the first upload and the final wait
for the codes copied to the host. The same code runs on a CPU device (without streams or pinned memory), which is how it is tested.
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

from tessera_pipeline.encode import device_prep, memory, prepare
from tessera_pipeline.encode.memory import COMPACT_PIXELS, REDUCE_PIXELS
from tessera_pipeline.encode.normalisation import NormStats
from tessera_pipeline.encode.quantise import quantise
from tessera_pipeline.encode.result import EncodeStats
from tessera_pipeline.errors import EncodeError
from tessera_pipeline.inputs.tile import DPixelTile
from tessera_pipeline.model.checkpoint import LoadedModel
from tessera_pipeline.model.fixed import FixedBackbone, FixedReducer, GraphedBackbone
from tessera_pipeline.model.flops import backbone_flops, reducer_flops
from tessera_pipeline.precision import FP16_GUARD_LIMIT

log = logging.getLogger(__name__)

Stream = Literal["s2", "s1"]
STREAMS: tuple[Stream, ...] = ("s2", "s1")
#: Receives encoded pixels as they finish: tile pixel ids and their float32 representations (a view valid during the call).
Sink = Callable[[np.ndarray, torch.Tensor], None]


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


@dataclass
class _PackRun:
    """A pack run since the last flush, kept under the fp16 guard until its overflow flag is read."""

    stream: Stream
    length: int
    size: int
    real: int
    slots: torch.Tensor  # device slots, padded to `size`
    tokens: torch.Tensor | None  # v1.0: the pack's host-built tokens
    ok: torch.Tensor  # device bool: output finite and within FP16_GUARD_LIMIT


class _WorkingSet:
    """Pixels resident on the device, by slot: inputs (v1.1) and pooled vectors, plus the host's record of who still waits."""

    def __init__(self, capacity: int, n_pixels: int, dims: dict[Stream, int],
                 arrays: dict[Stream, device_prep.StreamArrays] | None, device: torch.device) -> None:
        self.capacity = capacity
        self.arrays = arrays
        self.pooled = {s: torch.empty(capacity, d, dtype=torch.float32, device=device) for s, d in dims.items()}
        self.ids = np.empty(capacity, dtype=np.int64)
        self.waiting = {s: np.zeros(capacity, dtype=bool) for s in STREAMS}
        self.slot_of = np.full(n_pixels, -1, dtype=np.int64)
        self.count = 0

    def admit(self, ids: np.ndarray) -> int:
        """Give tile pixels `ids` the next free slots; returns the first."""
        first = self.count
        self.ids[first : first + len(ids)] = ids
        self.slot_of[ids] = np.arange(first, first + len(ids))
        self.count += len(ids)
        return first

    def _tensors(self) -> list[torch.Tensor]:
        extra = [t for a in self.arrays.values() for t in (a.raw, a.valid)] if self.arrays is not None else []
        return [*self.pooled.values(), *extra]

    def compact(self, keep: np.ndarray, device: torch.device) -> None:
        """Move the slots `keep` (ascending) to the front, COMPACT_PIXELS at a time (a slot only ever moves down)."""
        for i in range(0, len(keep), COMPACT_PIXELS):
            src = keep[i : i + COMPACT_PIXELS]
            if src[0] == i and src[-1] == i + len(src) - 1:
                continue
            idx = torch.from_numpy(src).to(device)
            for t in self._tensors():
                t[i : i + len(src)] = t.index_select(0, idx)
        n = len(keep)
        self.ids[:n] = self.ids[keep]
        for stream in STREAMS:
            self.waiting[stream][:n] = self.waiting[stream][keep]
            self.waiting[stream][n:] = False
        self.slot_of[self.ids[:n]] = np.arange(n)
        self.count = n


class FixedShapeEngine:
    """Encodes tiles on one device with fixed-shape packs; built once per encoder, reused for every tile."""

    def __init__(self, loaded: LoadedModel, *, dtype: torch.dtype, device: torch.device, norm: NormStats,
                 token_budget: int, chunk_pixels: int, seed: int, cuda_graphs: bool = False,
                 budget: int | None = None, fused: bool | None = None) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.version = self.cfg.version
        self.device = device
        self.dtype = dtype
        self.norm = norm
        self.seed = seed
        self.chunk_pixels = chunk_pixels
        self.plan = PackPlan(token_budget)
        self.budget = budget
        self.guard = dtype == torch.float16
        self._fp32: dict[Stream, FixedBackbone] = {}
        self._fp32_reducer: FixedReducer | None = None
        model = loaded.model
        self.backbones: dict[Stream, FixedBackbone] = {
            "s2": FixedBackbone(model.s2_backbone, dtype, fused), "s1": FixedBackbone(model.s1_backbone, dtype, fused)
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
            self.reducer(self._empty["s2"].expand(REDUCE_PIXELS, -1), self._empty["s1"].expand(REDUCE_PIXELS, -1))
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
            pooled = self.backbones[stream](bands, doy, 1, length)[0]
            if self.guard and not bool(pooled.abs().amax() <= FP16_GUARD_LIMIT):
                log.warning("fp16 guard: the empty %s stream's pooled vector overflowed; it is computed in float32", stream)
                pooled = self._fp32_backbone(stream)(bands, doy, 1, length)[0]
            self._empty[stream] = pooled.clone()
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

    def _blocks(self, tile: DPixelTile, rows: int) -> Iterator[_HostBlock]:
        """Row blocks of `rows` rows read one ahead in a background thread."""
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

    def _upload(self, block: _HostBlock, arrays: dict[Stream, device_prep.StreamArrays], first_slot: int) -> None:
        """Copy a v1.1 block to the device (side stream on CUDA) and store it pixel-major from `first_slot`.

        The copy overlaps compute; the store into the slots runs on the compute stream, after every
        earlier pack and compaction that read those (reused) slots.
        """
        ctx = torch.cuda.stream(self.upload_stream) if self.upload_stream is not None else _NullContext()
        with ctx:
            mask = block.mask.to(self.device, non_blocking=True) if block.mask is not None else None
            raw = {stream: block.raw[stream].to(self.device, non_blocking=True) for stream in STREAMS}
        if self.upload_stream is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self.upload_stream)
            for t in (*raw.values(), *([mask] if mask is not None else [])):
                t.record_stream(compute)
        for stream in STREAMS:
            device_prep.store_block(arrays[stream], first_slot, raw[stream], mask if stream == "s2" else None)

    def _to_device(self, ids: np.ndarray) -> torch.Tensor:
        return self._pin(torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))).to(self.device, non_blocking=True)

    def _run_pack(self, stream: Stream, length: int, size: int, queue: _Pending, ws: _WorkingSet,
                  runs: list[_PackRun], stats: EncodeStats) -> None:
        """Run one pack of `size` pixels (padded with copies of its first pixel) from a queue; pooled vectors land in their slots."""
        ids, tokens = queue.take(size)
        real = len(ids)
        slots = ws.slot_of[ids]
        ws.waiting[stream][slots] = False
        pad = size - real
        if pad:
            slots = np.concatenate([slots, np.full(pad, slots[0], dtype=slots.dtype)])
            if tokens is not None:
                tokens = torch.cat([tokens, tokens[:1].expand(pad, *tokens.shape[1:])])
        slots_dev = self._to_device(slots)
        out = self._forward(self.graphed.get(stream, self.backbones[stream]), stream, length, size, slots_dev, tokens, ws)
        ws.pooled[stream].index_copy_(0, slots_dev[:real], out[:real])
        if self.guard:
            runs.append(_PackRun(stream, length, size, real, slots_dev, tokens, out[:real].abs().amax() <= FP16_GUARD_LIMIT))
        stats.flops += backbone_flops(self.backbones[stream].cfg, length) * real
        hist = stats.s2_tokens if stream == "s2" else stats.s1_tokens
        hist[length] = hist.get(length, 0) + real

    def _forward(self, run: Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor], stream: Stream, length: int,
                 size: int, slots: torch.Tensor, tokens: torch.Tensor | None, ws: _WorkingSet) -> torch.Tensor:
        """Pooled vectors of a pack: tokens gathered on the device from resident inputs (v1.1) or given (v1.0)."""
        if tokens is None:
            assert ws.arrays is not None
            bands, doy = device_prep.gather_tokens(ws.arrays[stream], slots, length)
        else:
            bands = tokens[..., :-1].reshape(size * length, -1)
            doy = tokens[..., -1].reshape(-1).long().clamp_(0, 366)
        return run(bands, doy, size, length)

    def _drain(self, queues: dict[tuple[Stream, int], _Pending], ws: _WorkingSet, runs: list[_PackRun],
               stats: EncodeStats, *, tails: bool) -> None:
        """Run every full pack waiting; with `tails`, then each queue's remainder as one padded pack."""
        for (stream, length), queue in sorted(queues.items()):
            full = self.plan.full(length)
            while queue.count >= full:
                self._run_pack(stream, length, full, queue, ws, runs, stats)
            if tails and queue.count:
                self._run_pack(stream, length, self.plan.tail(length, queue.count), queue, ws, runs, stats)

    def _rerun_overflowed(self, ws: _WorkingSet, runs: list[_PackRun], stats: EncodeStats) -> None:
        """The fp16 guard: packs whose pooled output is non-finite or saturated run again in float32 (counted)."""
        if not runs:
            return
        ok = torch.stack([r.ok for r in runs]).cpu().numpy()
        for run in (r for r, fine in zip(runs, ok) if not fine):
            out = self._forward(self._fp32_backbone(run.stream), run.stream, run.length, run.size, run.slots, run.tokens, ws)
            ws.pooled[run.stream].index_copy_(0, run.slots[: run.real], out[: run.real])
            stats.fp32_reruns += 1
            stats.flops += backbone_flops(self.backbones[run.stream].cfg, run.length) * run.real
        if not ok.all():
            log.info("fp16 guard: %d of %d packs overflowed and ran again in float32", int((~ok).sum()), len(runs))
        runs.clear()

    def _fp32_backbone(self, stream: Stream) -> FixedBackbone:
        """A float32 view of a backbone for the fp16 guard's re-runs (built on first use)."""
        if stream not in self._fp32:
            module = self.loaded.model.s2_backbone if stream == "s2" else self.loaded.model.s1_backbone
            self._fp32[stream] = FixedBackbone(module, torch.float32, self.backbones[stream].fused)
        return self._fp32[stream]

    def _reduce_slice(self, s2: torch.Tensor, s1: torch.Tensor, stats: EncodeStats) -> torch.Tensor:
        """Full representations of REDUCE_PIXELS pooled pairs; under the fp16 guard, again in float32 if they overflow."""
        reps = self.reducer(s2, s1)
        if self.guard and not bool(reps[:, : self.cfg.saved_dims].abs().amax() <= FP16_GUARD_LIMIT):
            if self._fp32_reducer is None:
                self._fp32_reducer = FixedReducer(self.loaded.model, torch.float32)
            reps = self._fp32_reducer(s2, s1)
            stats.fp32_reruns += 1
        return reps

    def _flush(self, ws: _WorkingSet, runs: list[_PackRun], stats: EncodeStats, sink: Sink) -> None:
        """Reduce every resident pixel whose two streams are pooled, hand it to `sink`, and keep only those still waiting.

        Reduce calls always have REDUCE_PIXELS rows (padded with a copy of the first), so the bytes of a
        pixel do not depend on when it is reduced or with whom: any budget gives the same output.
        """
        self._rerun_overflowed(ws, runs, stats)
        n = ws.count
        done = ~(ws.waiting["s2"][:n] | ws.waiting["s1"][:n])
        slots = np.flatnonzero(done)
        stats.flops += len(slots) * reducer_flops(self.cfg)
        for i in range(0, len(slots), REDUCE_PIXELS):
            part = slots[i : i + REDUCE_PIXELS]
            padded = np.concatenate([part, np.full(REDUCE_PIXELS - len(part), part[0], dtype=part.dtype)])
            idx = self._to_device(padded)
            reps = self._reduce_slice(ws.pooled["s2"].index_select(0, idx), ws.pooled["s1"].index_select(0, idx), stats)
            sink(ws.ids[part], reps[: len(part)])
        ws.compact(np.flatnonzero(~done), self.device)

    def _admit(self, block: _HostBlock, ws: _WorkingSet, queues: dict[tuple[Stream, int], _Pending], stats: EncodeStats) -> None:
        """Make a block's encoded pixels resident, give empty streams the constant, and queue the rest by length."""
        local = np.arange(block.n) if block.keep is None else block.keep
        stats.skipped_pixels += block.n - len(local)
        ids = block.first + local
        first = ws.admit(ids)
        if ws.arrays is not None:
            self._upload(block, ws.arrays, first)
        for stream in STREAMS:
            lengths = block.lengths[stream]
            tokens = block.tokens[stream].to(self.device, non_blocking=True) if block.tokens else None
            empty = lengths == 0
            ws.waiting[stream][first : first + len(ids)] = ~empty
            if empty.any():
                ws.pooled[stream][self._to_device(first + np.flatnonzero(empty))] = self._empty_pooled(stream)
                setattr(stats, f"empty_{stream}", getattr(stats, f"empty_{stream}") + int(empty.sum()))
            for length in np.unique(lengths[~empty]).tolist():
                sel = np.flatnonzero(lengths == length)
                queue = queues.setdefault((stream, int(length)), _Pending())
                queue.push(ids[sel], tokens[torch.from_numpy(sel).to(self.device)] if tokens is not None else None)

    def memory_plan(self, tile: DPixelTile) -> memory.MemoryPlan:
        """How `tile` streams through the device under this engine's budget (the accounting its buffers follow)."""
        frames = memory.TileFrames(tile.height, tile.width, int(tile.bands.shape[0]),
                                   int(tile.sar_ascending.shape[0]) + int(tile.sar_descending.shape[0]))
        lengths = prepare.V1_1_BUCKETS if self.version == "v1.1" else (prepare.V1_0_SAMPLES,)
        extra = sum(g.bands.nbytes + g.doy.nbytes for g in self.graphed.values())
        return memory.plan_memory(self.cfg, frames, dtype_bytes=self.dtype.itemsize, full_pixels={n: self.plan.full(n) for n in lengths},
                                  budget=self.budget, chunk_pixels=self.chunk_pixels, extra_bytes=extra, fp32_reruns=self.guard)

    def stream_tile(self, tile: DPixelTile, stats: EncodeStats, sink: Sink, progress: Callable[[int], None] | None = None) -> None:
        """Stream a tile through the device in blocks: every encoded pixel reaches `sink` once, with its representation."""
        mplan = self.memory_plan(tile)
        log.debug("device memory plan for %s: %d rows per block, %d resident pixels, %.2f GB planned",
                  tile.name, mplan.block_rows, mplan.capacity, mplan.planned_bytes / 1e9)
        arrays: dict[Stream, device_prep.StreamArrays] | None = None
        if self.version == "v1.1":
            n_asc = int(tile.sar_ascending.shape[0])
            s1_doy = np.concatenate([np.asarray(tile.sar_ascending_doy), np.asarray(tile.sar_descending_doy)])
            arrays = {
                "s2": device_prep.allocate_stream("s2", mplan.capacity, np.asarray(tile.doys), self.cfg.s2.bands, self.norm, self.device),
                "s1": device_prep.allocate_stream("s1", mplan.capacity, s1_doy, self.cfg.s1.bands, self.norm, self.device, n_asc),
            }
        dims = {s: self.backbones[s].cfg.d_model for s in STREAMS}
        ws = _WorkingSet(mplan.capacity, tile.height * tile.width, dims, arrays, self.device)
        queues: dict[tuple[Stream, int], _Pending] = {}
        runs: list[_PackRun] = []
        for block in self._blocks(tile, mplan.block_rows):
            stats.prepare_s += block.read_s
            if ws.count + block.n > ws.capacity:
                self._flush(ws, runs, stats, sink)
            self._admit(block, ws, queues, stats)
            self._drain(queues, ws, runs, stats, tails=False)
            if progress is not None:
                progress(block.n)
        self._drain(queues, ws, runs, stats, tails=True)
        self._flush(ws, runs, stats, sink)

    def embed(self, tile: DPixelTile, stats: EncodeStats, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(tile pixel ids encoded, their full float32 representations on the device), for quality checks on small tiles."""
        ids: list[np.ndarray] = []
        reps: list[torch.Tensor] = []

        def keep(part: np.ndarray, rep: torch.Tensor) -> None:
            ids.append(part.copy())
            reps.append(rep.clone())

        self.stream_tile(tile, stats, keep, progress)
        if not ids:
            return np.zeros(0, dtype=np.int64), torch.zeros(0, self.cfg.representation_dim, device=self.device)
        return np.concatenate(ids), torch.cat(reps)

    def encode_arrays(self, tile: DPixelTile, stats: EncodeStats, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tile pixel ids encoded, int8 codes, float32 scales) on the host: the saved dims, quantised per pixel."""
        n = tile.height * tile.width
        codes = self._pinned((n, self.cfg.saved_dims), torch.int8)
        scales = self._pinned((n,), torch.float32)
        where = np.empty(n, dtype=np.int64)
        cursor = 0

        def store(part: np.ndarray, rep: torch.Tensor) -> None:
            nonlocal cursor
            q, s = quantise(rep[:, : self.cfg.saved_dims])
            codes[cursor : cursor + len(part)].copy_(q, non_blocking=True)
            scales[cursor : cursor + len(part)].copy_(s, non_blocking=True)
            where[cursor : cursor + len(part)] = part
            cursor += len(part)

        with torch.inference_mode(), self._on_device():
            self.stream_tile(tile, stats, store, progress)
            if self.cuda:
                torch.cuda.synchronize(self.device)
        return where[:cursor], codes[:cursor].numpy(), scales[:cursor].numpy()

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
