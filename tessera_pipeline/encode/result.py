"""What an encode returns: the tile's int8 embeddings and scales, and what the encode did (shared by both engines)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class EncodeStats:
    """What one encode did: pixels by kind, FLOPs actually computed, wall time by phase, fp16 batches re-run in float32."""

    pixels: int = 0
    skipped_pixels: int = 0
    empty_s2: int = 0
    empty_s1: int = 0
    flops: float = 0.0
    prepare_s: float = 0.0
    model_s: float = 0.0
    total_s: float = 0.0
    fp32_reruns: int = 0
    s2_tokens: dict[int, int] = field(default_factory=dict)
    s1_tokens: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodedTile:
    """An encoded tile in upstream's output format, plus run statistics."""

    name: str
    embeddings: np.ndarray  # int8 (H, W, 128)
    scales: np.ndarray  # float32 (H, W)
    stats: EncodeStats
