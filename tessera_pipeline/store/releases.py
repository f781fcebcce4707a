"""Releases: immutable manifests kept in the store as `_releases/{name}.parquet`, pinning the versions they name.

A version a release names is never deleted by a commit's cleanup (it stays, superseded, after a
reprocess) until the release is dropped. Writers learn the pins from one listing of `_releases/`
right before they delete anything; each release's `path` column is read once per process and
cached (releases are immutable). The rule and its one remaining race: docs/formats.md section 10.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from tessera_pipeline.errors import ReleaseError, ReleaseExistsError, ReleaseNotFoundError
from tessera_pipeline.store import layout, listing
from tessera_pipeline.store.backend import Backend
from tessera_pipeline.store.manifest import Manifest, read_manifest, version_marker

if TYPE_CHECKING:
    import pyarrow as pa

    from tessera_pipeline.store.zarr_store import TileStore, VerifyResult

#: Seconds a new release waits before checking that every version it names still exists: a writer that
#: listed `_releases/` just before the release landed has deleted what it was about to delete by then.
RELEASE_SETTLE_S = 5.0

def _vanished(backend: Backend, table: pa.Table) -> list[str]:
    """Objects of the versions a release names that no longer exist (deleted by a racing writer)."""
    years = np.asarray(table["year"].to_numpy())
    paths = np.asarray(table["path"].to_numpy(zero_copy_only=False))
    gone: list[str] = []
    for year in np.unique(years).tolist():
        keys = [f"{p}/{o}" for p in paths[years == year].tolist() for o in layout.VERSION_OBJECTS]
        gone += [k for k, missing in zip(keys, listing.absent(backend, int(year), keys).tolist()) if missing]
    return gone


def write_release(store: TileStore, name: str, manifest: Manifest, *, settle_s: float | None = None) -> str:
    """Put the manifest as release `name` (only if no release has that name), then check nothing it names vanished.

    The check waits `settle_s` (default RELEASE_SETTLE_S) after the put, for writers that were between
    their listing of `_releases/` and their deletes when the release landed.
    A version deleted by a writer that listed `_releases/` before the release landed makes the
    release unusable: it is removed again and ReleaseError raised (make it again).
    """
    key = layout.release_key(name)
    if not store.backend.put_if(key, manifest.to_parquet(), tag=None):
        raise ReleaseExistsError(f"release {name} exists in {store.url}: releases are immutable (drop it first)")
    time.sleep(RELEASE_SETTLE_S if settle_s is None else settle_s)
    gone = _vanished(store.backend, manifest.table)
    if gone:
        store.backend.delete(key)
        raise ReleaseError(f"release {name}: {gone[0]} was deleted while the release was made (a concurrent "
                           f"reprocess); the release was removed, make it again")
    return key


def read_release(store: TileStore, name: str) -> pa.Table:
    """A release's manifest table; ReleaseNotFoundError when the store has no release of that name."""
    data = store.backend.get(layout.release_key(name))
    if data is None:
        raise ReleaseNotFoundError(f"no release {name} in {store.url}")
    return read_manifest(data)


def drop_release(store: TileStore, name: str) -> list[str]:
    """Delete release `name`, then clean up the tiles it named that hold superseded versions; returns those deleted.

    A superseded version is deleted only when no other release names it and it is older than the
    store's cleanup grace period (TileStore.cleanup's rule).
    """
    table = read_release(store, name)
    store.backend.delete(layout.release_key(name))
    deleted: list[str] = []
    years, tiles = table["year"].to_pylist(), table["tile"].to_pylist()
    for year in sorted(set(years)):
        versions = listing.tile_versions(store.backend, year, {t for y, t in zip(years, tiles) if y == year})
        for tile in sorted(t for t, vs in versions.items() if len(vs) > 1):
            deleted += [layout.version_key(year, tile, v) for v in store.cleanup(year, tile)]
    return deleted


def verify_release(store: TileStore, name: str, *, workers: int = 4) -> list[VerifyResult]:
    """Check exactly the tiles and versions a release names: objects present, checksums equal to its rows."""
    rows = read_release(store, name).select(
        ["year", "tile", "version", "path", "height", "width", "dims", "embeddings_sha256", "scales_sha256"]
    ).to_pylist()
    return listing.parallel_map(lambda r: store.verify_named(int(r["year"]), str(r["tile"]), version_marker(r)),
                                rows, threads=max(1, workers))
