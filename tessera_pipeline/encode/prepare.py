"""Vectorised preparation of model inputs from d-pixel arrays, exactly as upstream builds them.

A tile is processed in row chunks: `read_chunk` turns (T,H,W,C) slices into pixel-major arrays.
v1.1 keeps every valid observation in date order and lengthens or shortens each stream to its
bucket (`build_resample_indices`, extras appended at the end); v1.0 samples 40 observations per
stream with a per-pixel counter-based RNG (reproducible, chunking-independent). No per-pixel
Python loops: the only loops run over distinct observation counts or bucket lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tessera_pipeline.encode.normalisation import EPS, NormStats
from tessera_pipeline.inputs.tile import DPixelTile

#: v1.1 bucket lengths (`num_obs_checkpoints`): multiples of 8 up to 256.
V1_1_BUCKETS: tuple[int, ...] = tuple(range(8, 257, 8))
V1_0_SAMPLES = 40
V1_0_EMPTY_S1_DOY = 180.0


@dataclass(frozen=True)
class Chunk:
    """Pixel-major view of a block of rows. S1 frames are the ascending block then the descending block."""

    pixel_index: np.ndarray  # (N,) int64, row * W + col in the whole tile
    s2: np.ndarray  # (N, T, 10) uint16
    s2_valid: np.ndarray  # (N, T) bool, mask == 1
    s2_doy: np.ndarray  # (T,) float32
    s1: np.ndarray  # (N, Ta+Td, 2) int16
    s1_valid: np.ndarray  # (N, Ta+Td) bool, any channel != 0
    s1_doy: np.ndarray  # (Ta+Td,) float32
    n_ascending: int

    @property
    def n_pixels(self) -> int:
        """Pixels in the chunk."""
        return int(self.pixel_index.shape[0])


def _pixel_major(a: np.ndarray) -> np.ndarray:
    """(T, rows, W, ...) -> contiguous (rows*W, T, ...)."""
    t = a.shape[0]
    flat = np.asarray(a).reshape(t, a.shape[1] * a.shape[2], *a.shape[3:])
    return np.ascontiguousarray(np.moveaxis(flat, 0, 1))


def read_chunk(tile: DPixelTile, row0: int, row1: int) -> Chunk:
    """Read rows [row0, row1) of every stream; only this block is ever decoded."""
    w = tile.width
    s2 = _pixel_major(tile.bands[:, row0:row1])
    s2_valid = _pixel_major(tile.masks[:, row0:row1]) != 0
    asc = _pixel_major(tile.sar_ascending[:, row0:row1])
    desc = _pixel_major(tile.sar_descending[:, row0:row1])
    n = (row1 - row0) * w
    s1 = np.concatenate([asc.reshape(n, -1, 2), desc.reshape(n, -1, 2)], axis=1)
    s1_doy = np.concatenate([np.asarray(tile.sar_ascending_doy), np.asarray(tile.sar_descending_doy)]).astype(np.float32)
    return Chunk(
        pixel_index=np.arange(row0 * w, row1 * w, dtype=np.int64),
        s2=s2.reshape(n, -1, s2.shape[-1]),
        s2_valid=s2_valid.reshape(n, -1),
        s2_doy=np.asarray(tile.doys).astype(np.float32),
        s1=s1,
        s1_valid=(s1 != 0).any(axis=-1),
        s1_doy=s1_doy,
        n_ascending=int(tile.sar_ascending.shape[0]),
    )


# --- v1.1 -----------------------------------------------------------------------------


def bucket_lengths(n_valid: np.ndarray, buckets: tuple[int, ...] = V1_1_BUCKETS) -> np.ndarray:
    """Smallest bucket >= n, capped at the largest; n = 0 maps to the smallest bucket."""
    table = np.asarray(buckets)
    idx = np.minimum(np.searchsorted(table, n_valid, side="left"), len(table) - 1)
    return table[idx]


@lru_cache(maxsize=4096)
def build_resample_indices(n: int, target: int) -> np.ndarray:
    """Upstream's index map from n valid observations to `target` tokens (order is semantic)."""
    if target == n:
        return np.arange(n)
    if target < n:
        return np.array([chunk[len(chunk) // 2] for chunk in np.array_split(np.arange(n), target)])
    extra = target - n
    extras = np.rint(np.linspace(0, n - 1, extra + 2)[1:-1]).astype(np.int64)
    return np.concatenate([np.arange(n), extras])


def _valid_first(valid: np.ndarray) -> np.ndarray:
    """Per row, the indices of valid frames in order followed by the invalid ones."""
    return np.argsort(~valid, axis=1, kind="stable")


def resampled_positions(valid: np.ndarray, n_valid: np.ndarray, length: int) -> np.ndarray:
    """(P, length) frame indices for pixels that all share bucket `length` (and have n > 0)."""
    order = _valid_first(valid)
    pos = np.empty((valid.shape[0], length), dtype=np.int64)
    for n in np.unique(n_valid):
        rows = np.flatnonzero(n_valid == n)
        pos[rows] = order[rows][:, build_resample_indices(int(n), length)]
    return pos


def _assemble(values: np.ndarray, pos: np.ndarray, mean: np.ndarray, std: np.ndarray, doy: np.ndarray) -> np.ndarray:
    """Gather frames, standardise with per-frame statistics, append the raw DOY column."""
    raw = np.take_along_axis(values, pos[..., None], axis=1)
    out = np.empty((*pos.shape, values.shape[-1] + 1), dtype=np.float32)
    out[..., :-1] = (raw.astype(np.float32) - mean[pos]) / (std[pos] + np.float32(EPS))
    out[..., -1] = doy[pos]
    return out


def v1_1_s2_input(chunk: Chunk, pixels: np.ndarray, length: int, stats: NormStats) -> np.ndarray:
    """S2 model input (P, length, 11) for chunk pixels with at least one clear observation."""
    valid = chunk.s2_valid[pixels]
    pos = resampled_positions(valid, valid.sum(axis=1), length)
    t = chunk.s2.shape[1]
    mean = np.broadcast_to(stats.s2_mean, (t, stats.s2_mean.size))
    std = np.broadcast_to(stats.s2_std, (t, stats.s2_std.size))
    return _assemble(chunk.s2[pixels], pos, mean, std, chunk.s2_doy)


def s1_frame_stats(chunk: Chunk, stats: NormStats) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame S1 mean/std: ascending frames use s1a statistics, descending ones s1d."""
    n_desc = chunk.s1.shape[1] - chunk.n_ascending
    mean = np.concatenate([np.tile(stats.s1a_mean, (chunk.n_ascending, 1)), np.tile(stats.s1d_mean, (n_desc, 1))])
    std = np.concatenate([np.tile(stats.s1a_std, (chunk.n_ascending, 1)), np.tile(stats.s1d_std, (n_desc, 1))])
    return mean.astype(np.float32), std.astype(np.float32)


def v1_1_s1_input(chunk: Chunk, pixels: np.ndarray, length: int, stats: NormStats) -> np.ndarray:
    """S1 model input (P, length, 3): valid ascending frames, then valid descending, resampled."""
    valid = chunk.s1_valid[pixels]
    pos = resampled_positions(valid, valid.sum(axis=1), length)
    mean, std = s1_frame_stats(chunk, stats)
    return _assemble(chunk.s1[pixels], pos, mean, std, chunk.s1_doy)


# --- v1.0 -----------------------------------------------------------------------------

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a fast, well-mixed counter-based hash (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def uniform_keys(seed: int, stream: int, pixel_index: np.ndarray, n: int) -> np.ndarray:
    """(P, n) uniforms in [0, 1) that depend only on (seed, stream, pixel, column): chunking-independent."""
    with np.errstate(over="ignore"):
        base = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ (np.uint64(stream) * _M1))
        px = _splitmix64(pixel_index.astype(np.uint64) ^ base)
        cols = np.arange(n, dtype=np.uint64) * _M2
        bits = _splitmix64(px[:, None] ^ cols[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def sample_positions(valid: np.ndarray, pixel_index: np.ndarray, seed: int, stream: int, k: int = V1_0_SAMPLES) -> np.ndarray:
    """Upstream's `np.random.choice(valid, k, replace=n<k)` then sort, with a seeded per-pixel RNG.

    A pixel with no valid frame samples from all frames, as upstream does. With exactly k valid
    frames the result is every valid frame in order, which is what upstream returns too.
    """
    valid = valid.copy()
    none = ~valid.any(axis=1)
    valid[none] = True
    n_valid = valid.sum(axis=1)
    t = valid.shape[1]
    keys = uniform_keys(seed, stream, pixel_index, t + k)
    order = _valid_first(valid)
    pos = np.empty((valid.shape[0], k), dtype=np.int64)
    many = n_valid >= k
    if many.any():
        frame_keys = np.where(valid[many], keys[many, :t], np.inf)
        pos[many] = np.sort(np.argpartition(frame_keys, k - 1, axis=1)[:, :k], axis=1)
    few = np.flatnonzero(~many)
    if few.size:
        pick = np.minimum((keys[few, t:] * n_valid[few, None]).astype(np.int64), n_valid[few, None] - 1)
        pos[few] = np.sort(np.take_along_axis(order[few], pick, axis=1), axis=1)
    return pos


def v1_0_keep(chunk: Chunk) -> np.ndarray:
    """Upstream v1.0's pixel filter: some S2 band is non-zero at some time (min_valid_timesteps = 0)."""
    return chunk.s2.reshape(chunk.n_pixels, -1).any(axis=1)


def v1_0_s2_input(chunk: Chunk, pixels: np.ndarray, stats: NormStats, seed: int) -> np.ndarray:
    """S2 input (P, 40, 11): 40 sampled observations (clear ones when there are any), date order."""
    pos = sample_positions(chunk.s2_valid[pixels], chunk.pixel_index[pixels], seed, stream=2)
    t = chunk.s2.shape[1]
    mean = np.broadcast_to(stats.s2_mean, (t, stats.s2_mean.size))
    std = np.broadcast_to(stats.s2_std, (t, stats.s2_std.size))
    return _assemble(chunk.s2[pixels], pos, mean, std, chunk.s2_doy)


def v1_0_s1_input(chunk: Chunk, pixels: np.ndarray, stats: NormStats, seed: int) -> np.ndarray:
    """S1 input (P, 40, 3) from ascending-then-descending frames, v1.0's one S1 statistic for both.

    With both orbits empty, upstream substitutes one zero frame (DOY 180) per orbit.
    """
    values, valid, doy = chunk.s1[pixels], chunk.s1_valid[pixels], chunk.s1_doy
    if values.shape[1] == 0:
        values = np.zeros((len(pixels), 2, 2), dtype=np.int16)
        valid = np.zeros((len(pixels), 2), dtype=bool)
        doy = np.full(2, V1_0_EMPTY_S1_DOY, dtype=np.float32)
    pos = sample_positions(valid, chunk.pixel_index[pixels], seed, stream=1)
    t = values.shape[1]
    return _assemble(values, pos, np.broadcast_to(stats.s1a_mean, (t, 2)), np.broadcast_to(stats.s1a_std, (t, 2)), doy)


__all__ = [
    "Chunk",
    "V1_1_BUCKETS",
    "bucket_lengths",
    "build_resample_indices",
    "read_chunk",
    "sample_positions",
    "v1_0_s1_input",
    "v1_0_s2_input",
    "v1_0_keep",
    "v1_1_s1_input",
    "v1_1_s2_input",
]
