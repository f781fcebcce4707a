"""This machine's matrix-multiply peak, measured (not looked up) for a dtype and thread count.

The peak is the best throughput of several GEMMs: large squares and the model's own shapes, each
timed repeatedly, best run kept. Taking the best makes it an upper bound, so MFU is conservative.
"""

from __future__ import annotations

import time

import torch

#: (M, K, N) shapes: squares, and the v1.1 transformer's FFN and QKV GEMMs at 256 pixels x 64 tokens.
PEAK_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1024, 1024, 1024),
    (2048, 2048, 2048),
    (4096, 4096, 4096),
    (16384, 768, 2048),
    (16384, 768, 2304),
)


def gemm_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float) -> float:
    """Best GFLOP/s of repeated (m,k) @ (k,n) products in `dtype` over about `seconds`."""
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.matmul(a, b, out=out)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = max(best, 2.0 * m * k * n / (time.perf_counter() - t0) / 1e9)
        if time.perf_counter() > deadline:
            return best


def matmul_peak(dtype: torch.dtype, *, seconds_per_shape: float = 1.0) -> tuple[float, tuple[int, int, int]]:
    """Best GFLOP/s over `PEAK_SHAPES` (at the current torch thread count) and the shape that gave it."""
    results = {shape: gemm_gflops(*shape, dtype, seconds_per_shape) for shape in PEAK_SHAPES}
    shape = max(results, key=results.__getitem__)
    return results[shape], shape
