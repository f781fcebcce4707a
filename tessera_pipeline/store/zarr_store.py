"""The Zarr v3 embedding store: versioned per-tile writes, a commit marker written last, readers
that resolve the marker first. The protocol and layout are specified in docs/formats.md.

`TileStore` is the store's one face; its parts live in modules of one job each: `reader.py`
(resolve, read, verify), `commit.py` (write, commit, clean up), `encoding.py` (a version's zarr
objects in memory), `records.py` (the marker and root attributes as typed models) and
`results.py` (what calls return). Names are re-exported here for existing imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera_pipeline.quantisation import dequantise
from tessera_pipeline.store.commit import CLEANUP_GRACE_S, TileWriter
from tessera_pipeline.store.encoding import EMBEDDING_CHUNK, SCALES_NODATA
from tessera_pipeline.store.reader import READ_RETRIES, Window
from tessera_pipeline.store.records import root_attributes
from tessera_pipeline.store.fencing import Fence
from tessera_pipeline.store.results import CommitRecord, IncompleteTile, PriorMarker, TileData, VerifyResult

__all__ = [
    "CLEANUP_GRACE_S",
    "EMBEDDING_CHUNK",
    "READ_RETRIES",
    "SCALES_NODATA",
    "CommitRecord",
    "IncompleteTile",
    "TileData",
    "TileStore",
    "VerifyResult",
    "Window",
    "dequantise",
    "root_attributes",
    "write_encoded_tile",
]


class TileStore(TileWriter):
    """A Zarr v3 embedding store at a local path or `s3://bucket/prefix` (or, read-only, `https://`);
    racing writers of a tile are fenced. Reading: `TileReader`; writing: `TileWriter`."""


def write_encoded_tile(
    store_url: str,
    year: int,
    tile: str,
    embeddings: np.ndarray,
    scales: np.ndarray,
    *,
    epsg: int,
    transform: tuple[float, ...],
    provenance: Mapping[str, Any],
    model_attrs: Mapping[str, Any],
    prior: PriorMarker | None = None,
    fence: Fence | None = None,
) -> CommitRecord:
    """Create the store if absent (root attributes from `model_attrs`), then write and commit one tile
    (conditional on `prior`, the marker read before encoding, and checked against `fence` when given)."""
    store = TileStore(store_url)
    store.create(model_attrs)
    return store.write_tile(year, tile, embeddings, scales, epsg=epsg, transform=transform, provenance=provenance,
                            prior=prior, fence=fence)
