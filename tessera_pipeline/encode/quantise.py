"""Upstream's per-pixel symmetric int8 quantisation and its inverse."""

from __future__ import annotations

import torch

from tessera_pipeline.quantisation import dequantise

__all__ = ["dequantise", "quantise"]

MIN_SCALE = 1e-8


def quantise(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D) float -> int8 codes and float32 scales: scale = max(max|e|/127, 1e-8); q = round_half_even(e/scale).

    True division (not multiplication by 1/scale), as upstream: it decides near-ties.
    """
    e = embeddings.float()
    scale = torch.clamp(e.abs().amax(dim=-1) / 127.0, min=MIN_SCALE)
    q = torch.clamp(torch.round(e / scale[:, None]), -128, 127).to(torch.int8)
    return q, scale

