"""A content fingerprint of a tile's inputs, recorded in provenance so outputs trace to exact bytes."""

from __future__ import annotations

import hashlib

import numpy as np

from tessera_pipeline.inputs.tile import DPIXEL_FILES, DPixelTile

_BLOCK = 1 << 24


def input_fingerprint(tile: DPixelTile) -> str:
    """sha256 over every array's dtype, shape and bytes (streamed in blocks, never copied whole)."""
    digest = hashlib.sha256()
    for fname in DPIXEL_FILES:
        array = getattr(tile, fname[:-4])
        digest.update(f"{fname}:{array.dtype.str}:{array.shape};".encode())
        flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8) if array.size else np.zeros(0, np.uint8)
        for start in range(0, flat.size, _BLOCK):
            digest.update(memoryview(flat[start : start + _BLOCK]))
    return digest.hexdigest()
