"""This machine's matrix-multiply peak, measured (not looked up) for a dtype and thread count.

The peak is the best sustained throughput of several GEMMs: large squares and the model's own
shapes, each run back to back for a fixed time with a preallocated output. Sustained, because the
encoder runs for minutes: AMX and AVX-512 clocks drop under continuous load, and on shared hosts
short bursts run well above what a minute sustains.
"""

from __future__ import annotations

import time

import torch

#: (M, K, N) shapes: squares, and the v1.1 transformer's FFN and QKV GEMMs at 16384 tokens.
PEAK_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1024, 1024, 1024),
    (2048, 2048, 2048),
    (4096, 4096, 4096),
    (16384, 768, 2048),
    (16384, 768, 2304),
)


def gemm_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float) -> float:
    """Sustained GFLOP/s of (m,k) @ (k,n) in `dtype`, run back to back for about `seconds`."""
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.matmul(a, b, out=out)
    count, start = 0, time.perf_counter()
    while True:
        torch.matmul(a, b, out=out)
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2.0 * m * k * n * count / elapsed / 1e9


def matmul_peaks(dtype: torch.dtype, *, seconds_per_shape: float = 1.0) -> dict[tuple[int, int, int], float]:
    """Sustained GFLOP/s of every shape in `PEAK_SHAPES` at the current torch thread count."""
    return {shape: gemm_gflops(*shape, dtype, seconds_per_shape) for shape in PEAK_SHAPES}
