"""Embeddings at lon/lat points across tiles, on geotessera's zone grid, with a status for every point.

A point reads the pixel of its UTM zone's 10 m lattice that holds it. Tile rasters overlap their
neighbours (each is the bounding box of a rotated 0.1 degree cell), so up to nine tiles can cover
a point: the tile later in (lon, lat) order that has data there wins, as in geotessera's zone
stores, except that a tile's no-data pixel never hides a neighbour's data. Work is vectorised per
tile touched; only the chunks holding the points are read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tessera_pipeline.grid import N_LAT, N_LON, geometry_arrays, index_from_point, names_from_index, utm_zone
from tessera_pipeline.landmask import LandMask
from tessera_pipeline.read import lattice
from tessera_pipeline.read.index import TileRef
from tessera_pipeline.read.tiles import VersionReader, dequantise, valid_scale
from tessera_pipeline.store.listing import parallel_map

VALID = "valid"
WATER = "water"
NO_OBSERVATIONS = "no-observations"
PENDING = "pending"
OUTSIDE = "outside"
#: Every status a point can have, in the order of their codes.
STATUSES = (VALID, WATER, NO_OBSERVATIONS, PENDING, OUTSIDE)
_CODE = {name: np.int8(i) for i, name in enumerate(STATUSES)}
#: Points read per block: bounds a read's working memory (neighbourhoods, pixel pairs, zarr coordinate arrays).
BLOCK_POINTS = 16_384
#: Tiles read side by side (each read is a few I/O-bound requests).
READ_THREADS = 16
#: Pixels a neighbour's raster may reach past its grid geometry's box (the box's edges are projected corners).
RASTER_MARGIN = 2

#: Finds the committed version of tiles by name (fresh=True: ask again, a version vanished mid-read).
Lookup = Callable[[list[str], bool], dict[str, TileRef]]


@dataclass(frozen=True)
class PointSamples:
    """Per point: the embedding (float32 with NaN rows, or int8 with `scales`), its status and the tile read."""

    lon: np.ndarray
    lat: np.ndarray
    embeddings: np.ndarray
    scales: np.ndarray
    status: np.ndarray
    tile: np.ndarray
    version: np.ndarray

    def counts(self) -> dict[str, int]:
        """How many points have each status."""
        return {name: int(np.count_nonzero(self.status == name)) for name in STATUSES}


def _neighbourhood(lon: np.ndarray, lat: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """Cell ids (ix * N_LAT + iy) of each point's 3 x 3 cells that lie in `zone` (N, 9), -1 for the others."""
    ix, iy = index_from_point(lon, lat)
    nx = (np.asarray(ix, np.int64)[:, None] + np.array([-1, -1, -1, 0, 0, 0, 1, 1, 1])) % N_LON
    ny = np.asarray(iy, np.int64)[:, None] + np.array([-1, 0, 1, -1, 0, 1, -1, 0, 1])
    inside = (utm_zone(nx / 10.0 - 180.0 + 0.05) == zone[:, None]) & (ny >= 0) & (ny < N_LAT)
    return np.where(inside, nx * N_LAT + ny, -1)


def _reachable(ids: np.ndarray, rows: np.ndarray, cols: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """`ids` with -1 where a cell's raster (its grid geometry, RASTER_MARGIN pixels wider) cannot hold the point.

    A neighbour's raster reaches only a strip (tens to hundreds of metres) into a point's cell, so most points
    need their own cell alone: one marker lookup per point, not nine. Cells of another zone's CRS are kept."""
    wanted = np.unique(ids[ids >= 0])
    if not len(wanted):
        return ids
    g = geometry_arrays(wanted // N_LAT, wanted % N_LAT)
    south = (g["epsg"] >= 32701) & (g["epsg"] <= 32760)
    row0 = np.floor(-(g["origin_n"] - np.where(south, lattice.SOUTH_FALSE_NORTHING, 0.0)) / lattice.PIXEL_SIZE)
    col0 = np.floor(g["origin_e"] / lattice.PIXEL_SIZE)
    slot = np.searchsorted(wanted, np.maximum(ids, 0))
    r, c = rows[:, None] - row0[slot], cols[:, None] - col0[slot]
    holds = ((r >= -RASTER_MARGIN) & (r < g["height"][slot] + RASTER_MARGIN) & (c >= -RASTER_MARGIN)
             & (c < g["width"][slot] + RASTER_MARGIN))
    other_crs = g["epsg"][slot] % 100 != zone[:, None]
    holds[:, 4] = True  # the point's own cell: its status needs to know whether it is committed
    return np.where(holds | other_crs, ids, -1)


def seam_zone(lon: np.ndarray) -> np.ndarray:
    """The neighbouring zone of points within one cell (0.1 degree) of a zone boundary, else 0.

    A tile's raster reaches past its zone's edge, so a point there can hold data only on the next zone's grid
    (geotessera's readers fall back to it the same way)."""
    zone = utm_zone(lon)
    west_edge = (zone - 1) * 6.0 - 180.0
    near_west = (lon - west_edge < 0.1) & (zone > 1)
    near_east = (west_edge + 6.0 - lon < 0.1) & (zone < 60)
    return np.where(near_west, zone - 1, np.where(near_east, zone + 1, 0))


class _Winners:
    """Per point of a block: the tile (index into `refs`) and tile pixel whose data a point reads."""

    def __init__(self, n: int) -> None:
        self.tile = np.full(n, -1, np.int64)
        self.rc = np.zeros((n, 2), np.int64)
        self.refs: list[TileRef] = []


def _overlay(lookup: Lookup, reader: VersionReader, lon: np.ndarray, lat: np.ndarray, zone: np.ndarray, pts: np.ndarray,
             won: _Winners) -> set[int]:
    """Give each point in `pts` the pixel of the tile later in (lon, lat) order with data there, on `zone`'s lattice.

    The tiles' scales are read side by side (READ_THREADS); the overlay rule then applies them in order.
    Returns the ids of committed cells among the points' neighbourhoods."""
    rows = np.zeros(len(pts), np.int64)
    cols = np.zeros(len(pts), np.int64)
    for z in np.unique(zone[pts]):
        sel = zone[pts] == z
        x, y = lattice.project(lon[pts][sel], lat[pts][sel], int(z))
        rows[sel], cols[sel] = lattice.pixel_of(x, y)
    ids = _reachable(_neighbourhood(lon[pts], lat[pts], zone[pts]), rows, cols, zone[pts])
    wanted = np.unique(ids[ids >= 0])
    names = names_from_index(wanted // N_LAT, wanted % N_LAT)
    found = lookup(names, False)
    pair_point, pair_slot = np.nonzero(ids >= 0)
    pair_tile = np.searchsorted(wanted, ids[pair_point, pair_slot])
    by_tile = np.argsort(pair_tile, kind="stable")
    bounds = np.searchsorted(pair_tile[by_tile], np.arange(len(wanted) + 1))
    jobs: list[tuple[TileRef, np.ndarray, np.ndarray, np.ndarray]] = []
    for k in np.lexsort((wanted % N_LAT, wanted // N_LAT)).tolist():  # (lon, lat) order: later wins
        ref = found.get(names[k])
        if ref is None:
            continue
        mine = pair_point[by_tile[bounds[k]:bounds[k + 1]]]
        row0, col0 = lattice.tile_origin(ref.transform, ref.epsg)
        r, c = rows[mine] - row0, cols[mine] - col0
        hit = (r >= 0) & (r < ref.height) & (c >= 0) & (c < ref.width)
        if hit.any():
            jobs.append((ref, mine[hit], r[hit], c[hit]))
    has = parallel_map(lambda job: valid_scale(reader.scales(job[0])[job[2], job[3]]), jobs, threads=READ_THREADS)
    for (ref, mine, r, c), data in zip(jobs, has):
        won.tile[pts[mine[data]]] = len(won.refs)
        won.rc[pts[mine[data]]] = np.stack([r[data], c[data]], axis=1)
        won.refs.append(ref)
    return {int(wanted[k]) for k, name in enumerate(names) if name in found}


def sample(lookup: Lookup, reader: VersionReader, landmask: LandMask, lon: np.ndarray, lat: np.ndarray, *,
           dequantised: bool = True) -> PointSamples:
    """Embeddings and statuses at points (lon, lat arrays in degrees, WGS84), read in blocks of BLOCK_POINTS.

    Points are ordered by cell first, so the points of a tile fall in one block and its objects are read once."""
    lon, lat = np.asarray(lon, np.float64).ravel(), np.asarray(lat, np.float64).ravel()
    n = len(lon)
    out = PointSamples(lon=lon, lat=lat, embeddings=np.zeros((n, 128), np.float32 if dequantised else np.int8),
                       scales=np.full(n, np.nan, np.float32), status=np.full(n, OUTSIDE, dtype=object),
                       tile=np.full(n, "", dtype=object), version=np.full(n, "", dtype=object))
    where = np.flatnonzero(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) < 90) & (np.abs(lon) <= 180))
    if dequantised:
        out.embeddings[np.setdiff1d(np.arange(n), where)] = np.nan
    ix, iy = index_from_point(lon[where], lat[where])
    where = where[np.argsort(np.asarray(ix, np.int64) * N_LAT + iy, kind="stable")]
    for start in range(0, len(where), BLOCK_POINTS):
        _sample_block(lookup, reader, landmask, where[start:start + BLOCK_POINTS], out, dequantised)
    return out


def _sample_block(lookup: Lookup, reader: VersionReader, landmask: LandMask, block: np.ndarray, out: PointSamples,
                  dequantised: bool) -> None:
    """Statuses and embeddings of one block of points (indices into `out`, all with finite lon/lat on the globe)."""
    lon, lat = out.lon[block], out.lat[block]
    every = np.arange(len(block))
    won = _Winners(len(block))
    zone = np.asarray(utm_zone(lon), np.int64)
    committed = _overlay(lookup, reader, lon, lat, zone, every, won)
    other = np.asarray(seam_zone(lon), np.int64)
    again = every[(won.tile < 0) & (other > 0)]
    if len(again):
        _overlay(lookup, reader, lon, lat, other, again, won)
    ix, iy = index_from_point(lon, lat)
    own = np.isin(ix * N_LAT + iy, np.fromiter(committed, np.int64, len(committed)))
    land = landmask.contains(ix, iy)
    codes = np.where(own, _CODE[NO_OBSERVATIONS], np.where(land, _CODE[PENDING], _CODE[WATER]))
    codes[won.tile >= 0] = _CODE[VALID]
    out.status[block] = np.asarray(STATUSES, dtype=object)[codes]
    _gather(reader, won, block, out, dequantised)


def _gather(reader: VersionReader, won: _Winners, block: np.ndarray, out: PointSamples, dequantised: bool) -> None:
    """Read the winning pixels' embeddings and scales, tiles side by side (READ_THREADS), into `out` at `block`."""
    served = [np.flatnonzero(won.tile == k) for k in range(len(won.refs))]

    def read(k: int) -> tuple[np.ndarray, np.ndarray]:
        r, c = won.rc[served[k], 0], won.rc[served[k], 1]
        return reader.embeddings_at(won.refs[k], r, c), reader.scales(won.refs[k])[r, c]

    q = np.zeros((len(block), 128), np.int8)
    scales = np.full(len(block), np.nan, np.float32)
    busy = [k for k in range(len(won.refs)) if len(served[k])]
    for k, (values, sc) in zip(busy, parallel_map(read, busy, threads=READ_THREADS)):
        q[served[k]], scales[served[k]] = values, sc
        out.tile[block[served[k]]] = won.refs[k].tile
        out.version[block[served[k]]] = won.refs[k].version
    out.scales[block] = scales
    out.embeddings[block] = dequantise(q, scales) if dequantised else q
