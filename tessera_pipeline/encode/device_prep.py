"""v1.1 model inputs built on the device from raw d-pixel values: the same bytes `prepare` builds on the host.

The GPU path keeps a tile's raw arrays on the device, pixel-major (uint16 S2 DN, S2 validity, int16
S1 DN ascending block then descending block), and builds a pack's tokens there: valid frames in date
order, upstream's `build_resample_indices(n, bucket(n))` map (one table row per observation count),
standardisation with the per-frame statistics and the DOY. The arithmetic is the host's, float32
`(x - mean) / (std + 1e-9)` with IEEE subtraction and division, so the inputs are bit-identical to
`prepare.v1_1_s2_input` / `v1_1_s1_input` (`tests/test_fixed.py` checks this on CPU tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from tessera_pipeline.encode import prepare
from tessera_pipeline.encode.normalisation import EPS, NormStats

#: The longest bucket: resample table rows hold up to this many frame ranks.
MAX_BUCKET = prepare.V1_1_BUCKETS[-1]


@lru_cache(maxsize=64)
def resample_table(frames: int) -> np.ndarray:
    """(frames+1, MAX_BUCKET) int64: row n holds `build_resample_indices(n, bucket(n))`, zero-padded; row 0 unused."""
    table = np.zeros((frames + 1, MAX_BUCKET), dtype=np.int64)
    if frames:
        buckets = prepare.bucket_lengths(np.arange(1, frames + 1))
        for n, target in zip(range(1, frames + 1), buckets.tolist()):
            table[n, :target] = prepare.build_resample_indices(n, target)
    return table


@dataclass
class StreamArrays:
    """One stream of a tile on the device, pixel-major, with its per-frame tables."""

    raw: torch.Tensor  # (N, T, C) int16 (S2: uint16 DN viewed as int16)
    valid: torch.Tensor  # (N, T) bool
    mean: torch.Tensor  # (T, C) float32
    std_eps: torch.Tensor  # (T, C) float32, std + 1e-9 computed in float32
    doy: torch.Tensor  # (T,) int64
    resample: torch.Tensor  # (T+1, MAX_BUCKET) int64
    unsigned: bool

    @property
    def frames(self) -> int:
        """Frames (dates) in the stream."""
        return int(self.raw.shape[1])


def frame_tables(stream: str, stats: NormStats, n_frames: int, n_ascending: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame float32 mean and std + EPS: S2 bands' statistics; S1 s1a for ascending frames, s1d after."""
    if stream == "s2":
        mean = np.broadcast_to(stats.s2_mean, (n_frames, stats.s2_mean.size))
        std = np.broadcast_to(stats.s2_std, (n_frames, stats.s2_std.size))
    else:
        n_desc = n_frames - n_ascending
        mean = np.concatenate([np.tile(stats.s1a_mean, (n_ascending, 1)), np.tile(stats.s1d_mean, (n_desc, 1))])
        std = np.concatenate([np.tile(stats.s1a_std, (n_ascending, 1)), np.tile(stats.s1d_std, (n_desc, 1))])
    mean = np.ascontiguousarray(mean, dtype=np.float32)
    std_eps = (np.asarray(std, dtype=np.float32) + np.float32(EPS)).astype(np.float32)
    return mean.reshape(n_frames, -1), std_eps.reshape(n_frames, -1)


def allocate_stream(
    stream: str, n_pixels: int, doy: np.ndarray, bands: int, stats: NormStats, device: torch.device, n_ascending: int = 0
) -> StreamArrays:
    """Empty device arrays for a stream of `n_pixels` pixels and the frame tables of its dates."""
    frames = int(doy.shape[0])
    mean, std_eps = frame_tables(stream, stats, frames, n_ascending)
    return StreamArrays(
        raw=torch.empty(n_pixels, frames, bands, dtype=torch.int16, device=device),
        valid=torch.empty(n_pixels, frames, dtype=torch.bool, device=device),
        mean=torch.from_numpy(mean).to(device),
        std_eps=torch.from_numpy(std_eps).to(device),
        doy=torch.from_numpy(np.asarray(doy).astype(np.int64)).to(device),
        resample=torch.from_numpy(resample_table(frames)).to(device),
        unsigned=stream == "s2",
    )


def store_block(arrays: StreamArrays, first: int, raw_tm: torch.Tensor, mask_tm: torch.Tensor | None) -> None:
    """Write a block of pixels given time-major on the device ((T, n, C) raw, (T, n) S2 mask) at `first`."""
    n = raw_tm.shape[1]
    arrays.raw[first : first + n].copy_(raw_tm.transpose(0, 1))
    if mask_tm is not None:
        torch.ne(mask_tm.transpose(0, 1), 0, out=arrays.valid[first : first + n])
    else:
        torch.any(arrays.raw[first : first + n] != 0, dim=-1, out=arrays.valid[first : first + n])


def frame_positions(valid: torch.Tensor, resample: torch.Tensor, length: int) -> torch.Tensor:
    """(P, length) frame indices of pixels that all have bucket `length` and >= 1 valid frame.

    The k-th valid frame of a pixel (date order) is found by scattering each valid frame to its rank;
    the resample table then picks ranks exactly as upstream's `build_resample_indices` does.
    """
    pixels, frames = valid.shape
    rank = torch.cumsum(valid, dim=1) - 1
    n_valid = rank[:, -1] + 1
    slot = torch.where(valid, rank, torch.full_like(rank, frames))
    frame_ids = torch.arange(frames, device=valid.device).expand(pixels, frames)
    order = torch.zeros(pixels, frames + 1, dtype=torch.int64, device=valid.device).scatter_(1, slot, frame_ids)
    return order.gather(1, resample.index_select(0, n_valid)[:, :length])


def gather_tokens(arrays: StreamArrays, pixels: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised bands (P*length, C) float32 and DOYs (P*length,) int64 of `pixels` (device ids)."""
    frames = arrays.frames
    pos = frame_positions(arrays.valid.index_select(0, pixels), arrays.resample, length)
    flat = (pixels[:, None] * frames + pos).reshape(-1)
    values = arrays.raw.view(-1, arrays.raw.shape[-1]).index_select(0, flat)
    x = values.to(torch.int32).bitwise_and_(0xFFFF).float() if arrays.unsigned else values.float()
    pos = pos.reshape(-1)
    bands = (x - arrays.mean.index_select(0, pos)) / arrays.std_eps.index_select(0, pos)
    return bands, arrays.doy.index_select(0, pos)
