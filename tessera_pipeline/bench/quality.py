"""Agreement of two int8 encodings of the same tile, as the seeds' fp32-vs-bf16 table reports it."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from tessera_pipeline.quantisation import dequantise


class Quality(BaseModel):
    """Fractions (0..1) of int8 values equal / off by one / off by more, and per-pixel cosine similarity."""

    exact: float
    off_by_1: float
    off_by_2_plus: float
    cosine_mean: float
    cosine_min: float


def compare(codes_a: np.ndarray, scales_a: np.ndarray, codes_b: np.ndarray, scales_b: np.ndarray) -> Quality:
    """Compare encodings over pixels that either side encoded (scale > 0)."""
    used = (scales_a > 0) | (scales_b > 0)
    qa = codes_a[used].astype(np.int16)
    qb = codes_b[used].astype(np.int16)
    diff = np.abs(qa - qb)
    ea = dequantise(codes_a[used], scales_a[used]).astype(np.float64)
    eb = dequantise(codes_b[used], scales_b[used]).astype(np.float64)
    norms = np.linalg.norm(ea, axis=-1) * np.linalg.norm(eb, axis=-1)
    cosine = np.einsum("ij,ij->i", ea, eb) / np.where(norms > 0, norms, 1.0)
    n = max(diff.size, 1)
    return Quality(
        exact=float((diff == 0).sum() / n),
        off_by_1=float((diff == 1).sum() / n),
        off_by_2_plus=float((diff >= 2).sum() / n),
        cosine_mean=float(cosine.mean()) if cosine.size else 1.0,
        cosine_min=float(cosine.min()) if cosine.size else 1.0,
    )
