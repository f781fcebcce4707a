"""Open a d-pixel tile directory as memory-mapped arrays (minimal local reader; validation to come)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tessera_pipeline.errors import InputError
from tessera_pipeline.inputs.tile import DPIXEL_FILES, DPixelTile


def open_tile(location: str | Path, *, name: str | None = None) -> DPixelTile:
    """Memory-map the seven d-pixel arrays of the tile directory `location`."""
    root = Path(location)
    tile = name or root.name
    arrays = {}
    for fname in DPIXEL_FILES:
        path = root / fname
        if not path.is_file():
            raise InputError("missing file", tile=tile, file=str(path))
        try:
            arrays[fname[:-4]] = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise InputError(f"not a readable .npy file ({exc})", tile=tile, file=str(path)) from exc
    return DPixelTile(name=tile, **arrays)
