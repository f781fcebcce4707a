"""The int8 embedding format shared by every layer: per-pixel symmetric int8 codes and a float32 scale.

Encoding is `encode.quantise` (torch, upstream's exact rounding); this module holds the numpy
inverse that readers, exporters and benchmarks use, without importing torch.
"""

from __future__ import annotations

import numpy as np


def dequantise(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """int8 (..., D) codes and (...) scales -> float32 (..., D) = codes * scale (NaN where a scale is NaN)."""
    return codes.astype(np.float32) * scales.astype(np.float32, copy=False)[..., None]
