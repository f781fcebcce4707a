"""The Zarr v3 embedding store: crash-safe per-tile commits on a local path or `s3://` (read-only: `https://`).

Public API: `TileStore` (write, is_complete, read, list, verify, open as xarray),
`write_encoded_tile` (the one call encode-tile and the run workers make), and the records they
return. The on-disk format is specified in docs/formats.md.
"""

from __future__ import annotations

from tessera_pipeline.store.layout import TileKey
from tessera_pipeline.store.zarr_store import (
    CommitRecord,
    IncompleteTile,
    TileData,
    TileStore,
    VerifyResult,
    dequantise,
    root_attributes,
    write_encoded_tile,
)

__all__ = [
    "CommitRecord",
    "IncompleteTile",
    "TileData",
    "TileKey",
    "TileStore",
    "VerifyResult",
    "dequantise",
    "root_attributes",
    "write_encoded_tile",
]
