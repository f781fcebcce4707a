"""`mosaic`: committed tiles (or a release's) into geotessera's zone store, one whole shard at a time, incrementally.

Each shard (4096 x 4096 pixels of a zone, one year) is rebuilt from every tile version that overlaps it, in
(lon, lat) order, a later tile's data winning where it has data (no-data never erases data; geotessera's
writer pastes whole windows). Pixels of cells that are not land are NaN (water); a committed tile's
no-data pixels are NaN, as geotessera stores them; land nobody filled stays +inf.

What each shard holds is recorded beside the store (`{out}.mosaic/{year}/utm{zz}/{row}_{col}.json`: the tile
versions it was built from). A run rebuilds only the shards whose wanted versions differ from their record,
so after more tiles commit or a tile is reprocessed only the shards those tiles touch are rewritten; the
record goes last, so a killed run rebuilds the shards it did not finish, byte for byte.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tessera_pipeline.errors import PublishError, StoreIntegrityError
from tessera_pipeline.grid import N_LAT, TileSet, index_from_point, indices_from_names
from tessera_pipeline.landmask import LandMask
from tessera_pipeline.read import lattice
from tessera_pipeline.read.index import TileRef
from tessera_pipeline.read.lattice import SHARD_SIZE, ZoneGrid
from tessera_pipeline.read.tiles import VersionReader, valid_scale

log = logging.getLogger(__name__)

#: Record format written beside each shard.
RECORD_FORMAT = "tessera-mosaic-shard/1"
#: Inner chunks zarr encodes per batch when writing a shard (16,384 per array; batches cut its per-chunk overhead).
ENCODE_BATCH = 512
#: Edge in pixels of the blocks whose corners are projected back to tell water from land.
WATER_BLOCK = 16


@dataclass(frozen=True)
class ShardJob:
    """One shard to build: where it is and the tile versions that overlap it, in overlay order."""

    zone: int
    year: int
    row: int
    col: int
    tiles: tuple[TileRef, ...]

    @property
    def wanted(self) -> dict[str, str]:
        """The record this shard should carry: tile -> version."""
        return {t.tile: t.version for t in self.tiles}


@dataclass
class MosaicPlan:
    """The shards a mosaic run must (re)build, and those already up to date."""

    jobs: list[ShardJob] = field(default_factory=list)
    current: int = 0
    zones: dict[int, ZoneGrid] = field(default_factory=dict)


def state_prefix(year: int, zone: int) -> str:
    """Where the shard records of a zone and year live, relative to the state root."""
    return f"{year}/utm{zone:02d}"


def record_key(job: ShardJob) -> str:
    """The record of one shard, relative to the state root."""
    return f"{state_prefix(job.year, job.zone)}/{job.row}_{job.col}.json"


def record_bytes(job: ShardJob, left_out: Iterable[str] = ()) -> bytes:
    """A shard's record: its format, place and the tile versions it holds (a tile left out is not held, so the
    shard stays stale and is built again next run)."""
    held = {tile: version for tile, version in job.wanted.items() if tile not in set(left_out)}
    return json.dumps({"format": RECORD_FORMAT, "zone": job.zone, "year": job.year, "shard": [job.row, job.col],
                       "tiles": held}, sort_keys=True, indent=1).encode()


def centres(refs: Sequence[TileRef]) -> np.ndarray:
    """The (lon, lat) centres of the tiles, shape (n, 2): their names looked up at once, not parsed one by one."""
    ix, iy = indices_from_names([r.tile for r in refs])
    cells = TileSet(ix=ix, iy=iy)
    return np.stack([cells.lon, cells.lat], axis=1)


def shard_jobs(refs: Sequence[TileRef], grids: dict[int, ZoneGrid], year: int) -> list[ShardJob]:
    """Every shard the tiles touch, with the tiles overlapping it (in (lon, lat) order: TileRef.overlay_order)."""
    touching: dict[tuple[int, int, int], list[TileRef]] = {}
    lonlat = centres(refs)
    for k in np.lexsort((lonlat[:, 1], lonlat[:, 0])).tolist():
        ref = refs[k]
        zone = lattice.zone_of_epsg(ref.epsg)
        grid = grids[zone]
        row0, col0 = lattice.tile_origin(ref.transform, ref.epsg)
        r0, c0 = row0 - grid.row_offset, col0 - grid.col_offset
        if r0 < 0 or c0 < 0 or r0 + ref.height > grid.height or c0 + ref.width > grid.width:
            raise PublishError(f"{ref.tile} lies outside the grid zone {zone} was laid out on (its land mask's tiles): "
                               f"build that zone into a new store, with a land mask that includes the tile")
        for sr in range(r0 // SHARD_SIZE, (r0 + ref.height - 1) // SHARD_SIZE + 1):
            for sc in range(c0 // SHARD_SIZE, (c0 + ref.width - 1) // SHARD_SIZE + 1):
                touching.setdefault((zone, sr, sc), []).append(ref)
    return [ShardJob(zone, year, sr, sc, tuple(tiles)) for (zone, sr, sc), tiles in sorted(touching.items())]


def _by_zone(zones: np.ndarray) -> dict[int, np.ndarray]:
    """The indices of each zone's entries, in their order: one sort, not a scan of every entry per zone."""
    order = np.argsort(zones, kind="stable")
    found, starts = np.unique(zones[order], return_index=True)
    return {int(z): part for z, part in zip(found.tolist(), np.split(order, starts[1:]))}


def zone_grids(refs: list[TileRef], landmask: LandMask) -> dict[int, ZoneGrid]:
    """A grid per zone the tiles are in, laid over the zone's land tiles and these tiles (geotessera's rule).

    Tiles and land cells are grouped by zone once (linear in the tiles, whatever the number of zones)."""
    from tessera_pipeline.grid import CELLS_PER_DEGREE, utm_zone

    land_iy, land_ix = np.nonzero(landmask.grid)
    land_lon = land_ix / CELLS_PER_DEGREE - 180.0 + 0.05
    land_lat = land_iy / CELLS_PER_DEGREE - 90.0 + 0.05
    land_of = _by_zone(np.asarray(utm_zone(land_lon)))
    lonlat = centres(refs)
    tiles_of = _by_zone(np.array([lattice.zone_of_epsg(r.epsg) for r in refs], np.int64))
    none = np.zeros(0, np.int64)
    grids = {}
    for zone, mine in tiles_of.items():
        land = land_of.get(zone, none)
        lons = np.concatenate([land_lon[land], lonlat[mine, 0]])
        lats = np.concatenate([land_lat[land], lonlat[mine, 1]])
        grids[zone] = lattice.zone_grid(zone, lons, lats)
    return grids


def _cells(grid: ZoneGrid, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Cell id (ix * N_LAT + iy) of the cell holding each lattice pixel centre (-1 off the globe), by projecting back."""
    x, y = lattice.pixel_centres(rows, cols)
    lon, lat = lattice.unproject(x.ravel(), y.ravel(), grid.zone)
    ok = np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90)
    ix, iy = index_from_point(np.where(ok, lon, 0.0), np.clip(np.where(ok, lat, 0.0), -90, 90))
    return np.where(ok, ix * N_LAT + iy, -1).reshape(np.shape(rows))


def _water(grid: ZoneGrid, row0: int, col0: int, landmask: LandMask) -> np.ndarray:
    """True where a shard's pixel centre lies in a cell that is not land.

    Cells are projected back at the corners of 16 x 16-pixel blocks; a block whose four corners share a cell lies
    in it (cell edges are straight at this scale), and only the pixels of blocks across an edge are projected
    back one by one."""
    step = WATER_BLOCK
    n = SHARD_SIZE // step
    edges = np.arange(n + 1) * step
    corner = _cells(grid, *np.meshgrid(grid.row_offset + row0 + edges, grid.col_offset + col0 + edges, indexing="ij"))
    ids = np.full((SHARD_SIZE, SHARD_SIZE), -1, np.int64)
    same = (corner[:-1, :-1] == corner[1:, :-1]) & (corner[:-1, :-1] == corner[:-1, 1:]) & \
        (corner[:-1, :-1] == corner[1:, 1:])
    ids.reshape(n, step, n, step)[...] = np.where(same, corner[:-1, :-1], -1)[:, None, :, None]
    mixed = np.repeat(np.repeat(~same, step, axis=0), step, axis=1)
    r, c = np.nonzero(mixed)
    ids[r, c] = _cells(grid, grid.row_offset + row0 + r, grid.col_offset + col0 + c)
    on_globe = ids >= 0
    land = np.zeros(ids.shape, bool)
    land[on_globe] = landmask.contains(ids[on_globe] // N_LAT, ids[on_globe] % N_LAT)
    return ~land


def _all_land(grid: ZoneGrid, row0: int, col0: int, landmask: LandMask) -> bool:
    """True when every cell a shard can touch is land (so no pixel needs projecting back)."""
    r = grid.row_offset + row0 + np.array([0, SHARD_SIZE // 2, SHARD_SIZE])
    c = grid.col_offset + col0 + np.array([0, SHARD_SIZE // 2, SHARD_SIZE])
    x, y = lattice.pixel_centres(*np.meshgrid(r, c, indexing="ij"))
    lon, lat = lattice.unproject(x.ravel(), y.ravel(), grid.zone)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()) or np.abs(lat).max() >= 89.9:
        return False
    ix, iy = index_from_point(lon, lat)
    ix0, ix1, iy0, iy1 = int(ix.min()) - 1, int(ix.max()) + 1, max(int(iy.min()) - 1, 0), min(int(iy.max()) + 1, N_LAT - 1)
    gx, gy = np.meshgrid(np.arange(ix0, ix1 + 1) % landmask.grid.shape[1], np.arange(iy0, iy1 + 1))
    return bool(landmask.contains(gx, gy).all())


def build_shard(job: ShardJob, grid: ZoneGrid, reader: VersionReader, landmask: LandMask,
                left_out: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The shard's (128, 4096, 4096) int8 embeddings and (4096, 4096) scales.

    A tile whose data is damaged (a checksum, a missing object) is left out, its cause put in `left_out`."""
    row0, col0 = job.row * SHARD_SIZE, job.col * SHARD_SIZE
    emb = np.zeros((128, SHARD_SIZE, SHARD_SIZE), np.int8)
    scales = np.full((SHARD_SIZE, SHARD_SIZE), np.inf, np.float32)
    if not _all_land(grid, row0, col0, landmask):
        scales[_water(grid, row0, col0, landmask)] = np.nan
    for ref in job.tiles:
        t_row0, t_col0 = lattice.tile_origin(ref.transform, ref.epsg)
        r0 = t_row0 - grid.row_offset - row0
        c0 = t_col0 - grid.col_offset - col0
        a0, a1 = max(r0, 0), min(r0 + ref.height, SHARD_SIZE)
        b0, b1 = max(c0, 0), min(c0 + ref.width, SHARD_SIZE)
        if a0 >= a1 or b0 >= b1:
            continue
        try:
            q, s = reader.window(ref, slice(a0 - r0, a1 - r0), slice(b0 - c0, b1 - c0))
        except StoreIntegrityError as exc:
            log.warning("%s left out of shard utm%02d %d_%d: %s", ref.tile, job.zone, job.row, job.col, exc)
            left_out[ref.tile] = str(exc)
            continue
        has = valid_scale(s)
        here = scales[a0:a1, b0:b1]
        here[~has & ~valid_scale(here)] = np.nan
        here[has] = s[has]
        block = emb[:, a0:a1, b0:b1]
        block[:, has] = np.moveaxis(q, -1, 0)[:, has]
    return emb, scales


def write_shard(group: Any, time_index: int, job: ShardJob, emb: np.ndarray, scales: np.ndarray) -> None:
    """Write one shard whole: its old embeddings object first removed (a half rewrite never looks complete),
    then scales, then embeddings."""
    from zarr.core.sync import sync

    r, c = job.row * SHARD_SIZE, job.col * SHARD_SIZE
    h = min(SHARD_SIZE, group["scales"].shape[1] - r)
    w = min(SHARD_SIZE, group["scales"].shape[2] - c)
    import zarr

    array = group["embeddings"]
    sync((array.store_path / f"c/{time_index}/0/{job.row}/{job.col}").delete())
    with zarr.config.set({"codec_pipeline.batch_size": ENCODE_BATCH}):
        group["scales"][time_index, r:r + h, c:c + w] = scales[:h, :w]
        if not emb.any():
            array = array.with_config({"write_empty_chunks": True})
        array[time_index, :, r:r + h, c:c + w] = emb[:, :h, :w]


def stale(jobs: list[ShardJob], records: Callable[[ShardJob], bytes | None]) -> list[ShardJob]:
    """The shards whose record is missing or names other tile versions than wanted (records read side by side)."""
    from tessera_pipeline.store.listing import parallel_map

    held = [json.loads(raw).get("tiles") if raw else None for raw in parallel_map(records, jobs)]
    return [job for job, tiles in zip(jobs, held) if tiles != job.wanted]
