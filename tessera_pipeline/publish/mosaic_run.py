"""Running a mosaic: plan the shards from the committed tiles (or a release), lay out the zone store, and build the
stale shards as Ray tasks (one fresh worker process per shard: a shard needs ~2.2 GB while it is built), a bounded
window of them in flight (publish/shard_pool.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tessera_pipeline.errors import StoreError
from tessera_pipeline.landmask import LandMask, load_landmask
from tessera_pipeline.publish import mosaic, shard_pool, zone_store
from tessera_pipeline.publish.shard_pool import RayShards, ShardResult
from tessera_pipeline.read import lattice
from tessera_pipeline.read.index import TableIndex, TileRef
from tessera_pipeline.read.lattice import ZoneGrid

log = logging.getLogger(__name__)

#: Memory Ray reserves per shard task (the buffers are 2.1 GB).
SHARD_TASK_MEMORY = 3 * 2**30
#: Suffix of the folder beside the zone store that records what each shard holds.
STATE_SUFFIX = ".mosaic"


@dataclass
class MosaicReport:
    """What a mosaic run did."""

    out: str
    year: int
    zones: list[int]
    tiles: int
    shards: int
    rebuilt: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Tiles left out of the mosaic (damaged data, missing objects), with the cause.
    left_out: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"out": self.out, "year": self.year, "zones": self.zones, "tiles": self.tiles, "shards": self.shards,
                "rebuilt": len(self.rebuilt), "up_to_date": self.shards - len(self.rebuilt),
                "left_out": [{"tile": t, "cause": c} for t, c in sorted(self.left_out.items())],
                "seconds": round(self.seconds, 1)}


def source_refs(store_url: str, year: int,
                release: str | None) -> tuple[list[TileRef], dict[str, Any], str, dict[str, str]]:
    """The tile versions to mosaic (a release's, or every committed tile's via a manifest), the store's root
    attributes, a description of the source and the committed tiles the manifest left out (with the cause)."""
    from tessera_pipeline.store import TileStore
    from tessera_pipeline.store.manifest import build_manifest
    from tessera_pipeline.store.releases import read_release

    store = TileStore(store_url)
    attrs = store.root_attrs()
    if attrs is None:
        raise StoreError(f"no store at {store.url}")
    left_out: dict[str, str] = {}
    if release is not None:
        table, what = read_release(store, release), f"release {release}"
    else:
        built = build_manifest(store, year)
        left_out = {x.tile: f"tile {x.tile}: {x.problem}" for x in built.left_out}
        table, what = built.table, "committed tiles"
    return TableIndex(table, what).refs(year), attrs, what, left_out


def _open_out(out_url: str) -> Any:
    """The zone store's root group (an existing one, or a new empty one)."""
    import zarr

    from tessera_pipeline.store.backend import open_backend

    backend = open_backend(out_url)
    if backend.get("zarr.json") is None:
        return zarr.open_group(backend.zarr_store(), mode="w-", zarr_format=3), backend
    return zarr.open_group(backend.zarr_store(), mode="r+", zarr_format=3, use_consolidated=False), backend


def prepare(out_url: str, refs: list[TileRef], year: int, landmask: LandMask, attrs: dict[str, Any],
            source: dict[str, Any]) -> tuple[dict[int, ZoneGrid], dict[int, int]]:
    """Lay out the zone store for these tiles: root, zone groups, the year on each time axis; consolidated."""
    import zarr

    root, backend = _open_out(out_url)
    if not root.attrs.get("zarr_conventions"):
        root.attrs.update(zone_store.root_attributes(str(attrs.get("model_version", "1.1")), source))
    wanted = mosaic.zone_grids(refs, landmask)
    grids: dict[int, ZoneGrid] = {}
    times: dict[int, int] = {}
    for zone, grid in wanted.items():
        name = zone_store.group_name(zone)
        if name in root:
            group = root[name]
            grids[zone] = zone_store.grid_of(group, zone)
        else:
            group = zone_store.create_zone(root, grid, [year])
            grids[zone] = grid
        times[zone] = zone_store.add_year(group, year)
    zarr.consolidate_metadata(backend.zarr_store())
    return grids, times


def _build_one(job: mosaic.ShardJob, grid: ZoneGrid, time_index: int, store_url: str, out_url: str,
               landmask: LandMask) -> tuple[str, dict[str, str]]:
    """Build and write one shard, then its record (the record last: a killed build is redone); returns the record's
    key and the tiles left out of the shard, with their cause."""
    import zarr

    from tessera_pipeline.read.tiles import VersionReader
    from tessera_pipeline.store import TileStore
    from tessera_pipeline.store.backend import open_backend

    store = TileStore(store_url)
    state = open_backend(out_url + STATE_SUFFIX)
    key = mosaic.record_key(job)
    state.delete(key)
    left_out: dict[str, str] = {}
    emb, scales = mosaic.build_shard(job, grid, VersionReader(store.backend, store.url), landmask, left_out)
    out = open_backend(out_url)
    group = zarr.open_group(out.zarr_store(zone_store.group_name(job.zone)), mode="r+", zarr_format=3)
    mosaic.write_shard(group, time_index, job, emb, scales)
    state.put_atomic(key, mosaic.record_bytes(job, left_out))
    return key, left_out


def run_mosaic(store_url: str, year: int, out_url: str, *, zones: list[int] | None = None, release: str | None = None,
               landmask: str | LandMask | None = "globe", address: str | None = None, local_cpus: int | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> MosaicReport:
    """Build or update the zone store `out_url` from a store's committed tiles of `year` (or a release's)."""
    import ray

    from tessera_pipeline.store.backend import open_backend

    t0 = time.monotonic()
    refs, attrs, what, left_out = source_refs(store_url, year, release)
    if zones:
        wanted = set(zones)
        refs = [r for r in refs if lattice.zone_of_epsg(r.epsg) in wanted]
    if not refs:
        raise StoreError(f"no committed tiles of {year} to mosaic in {store_url}" + (f" zones {zones}" if zones else ""))
    mask = landmask if isinstance(landmask, LandMask) else load_landmask(landmask)
    grids, times = prepare(out_url, refs, year, mask, attrs, {"store": store_url, "tiles": what, "year": year})
    jobs = mosaic.shard_jobs(refs, grids, year)
    state = open_backend(out_url + STATE_SUFFIX)
    todo = mosaic.stale(jobs, lambda job: state.get(mosaic.record_key(job)))
    report = MosaicReport(out=out_url, year=year, zones=sorted(grids), tiles=len(refs), shards=len(jobs),
                          left_out=left_out)
    log.info("mosaic of %d tiles (%s): %d shard(s), %d to build", len(refs), what, len(jobs), len(todo))
    started = False
    if todo:
        if not ray.is_initialized():
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(address="local", num_cpus=local_cpus, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
            started = True
        try:
            mask_ref = ray.put(mask)
            executor = RayShards(_build_one, lambda job: (grids[job.zone], times[job.zone], store_url, out_url,
                                                          mask_ref), SHARD_TASK_MEMORY)

            def finished(_job: mosaic.ShardJob, result: ShardResult) -> None:
                """Note a built shard and the tiles it left out."""
                key, left = result
                report.rebuilt.append(key)
                report.left_out.update(left)
                if on_progress is not None:
                    on_progress(len(report.rebuilt), len(todo))

            shard_pool.drive(todo, executor, RayShards.window(), finished)
        finally:
            if started:
                ray.shutdown()
    report.seconds = time.monotonic() - t0
    return report
