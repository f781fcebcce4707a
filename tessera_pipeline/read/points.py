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

from tessera_pipeline.grid import N_LAT, N_LON, index_from_point, names_from_index, utm_zone
from tessera_pipeline.landmask import LandMask
from tessera_pipeline.read import lattice
from tessera_pipeline.read.index import TileRef
from tessera_pipeline.read.tiles import VersionReader, dequantise, valid_scale

VALID = "valid"
WATER = "water"
NO_OBSERVATIONS = "no-observations"
PENDING = "pending"
OUTSIDE = "outside"
#: Every status a point can have, in the order of their codes.
STATUSES = (VALID, WATER, NO_OBSERVATIONS, PENDING, OUTSIDE)
_CODE = {name: np.int8(i) for i, name in enumerate(STATUSES)}

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
    """Per point: the tile (index into `refs`) and tile pixel whose data a point reads."""

    def __init__(self, n: int) -> None:
        self.tile = np.full(n, -1, np.int64)
        self.rc = np.zeros((n, 2), np.int64)
        self.refs: list[TileRef] = []


def _overlay(lookup: Lookup, reader: VersionReader, lon: np.ndarray, lat: np.ndarray, zone: np.ndarray, pts: np.ndarray,
             won: _Winners) -> set[int]:
    """Give each point in `pts` the pixel of the tile later in (lon, lat) order with data there, on `zone`'s lattice.

    Returns the ids of committed cells among the points' neighbourhoods."""
    ids = _neighbourhood(lon[pts], lat[pts], zone[pts])
    wanted = np.unique(ids[ids >= 0])
    names = names_from_index(wanted // N_LAT, wanted % N_LAT)
    found = lookup(names, False)
    rows = np.zeros(len(pts), np.int64)
    cols = np.zeros(len(pts), np.int64)
    for z in np.unique(zone[pts]):
        sel = zone[pts] == z
        x, y = lattice.project(lon[pts][sel], lat[pts][sel], int(z))
        rows[sel], cols[sel] = lattice.pixel_of(x, y)
    pair_point, pair_slot = np.nonzero(ids >= 0)
    pair_tile = np.searchsorted(wanted, ids[pair_point, pair_slot])
    by_tile = np.argsort(pair_tile, kind="stable")
    bounds = np.searchsorted(pair_tile[by_tile], np.arange(len(wanted) + 1))
    for k in np.lexsort((wanted % N_LAT, wanted // N_LAT)).tolist():  # (lon, lat) order: later wins
        ref = found.get(names[k])
        if ref is None:
            continue
        mine = pair_point[by_tile[bounds[k]:bounds[k + 1]]]
        row0, col0 = lattice.tile_origin(ref.transform, ref.epsg)
        r, c = rows[mine] - row0, cols[mine] - col0
        hit = (r >= 0) & (r < ref.height) & (c >= 0) & (c < ref.width)
        mine, r, c = mine[hit], r[hit], c[hit]
        if not len(mine):
            continue
        has = valid_scale(reader.scales(ref)[r, c])
        won.tile[pts[mine[has]]] = len(won.refs)
        won.rc[pts[mine[has]]] = np.stack([r[has], c[has]], axis=1)
        won.refs.append(ref)
    return {int(wanted[k]) for k, name in enumerate(names) if name in found}


def sample(lookup: Lookup, reader: VersionReader, landmask: LandMask, lon: np.ndarray, lat: np.ndarray, *,
           dequantised: bool = True) -> PointSamples:
    """Embeddings and statuses at points (lon, lat arrays in degrees, WGS84)."""
    lon, lat = np.asarray(lon, np.float64).ravel(), np.asarray(lat, np.float64).ravel()
    codes = np.full(len(lon), _CODE[OUTSIDE])
    won = _Winners(len(lon))
    where = np.flatnonzero(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) < 90) & (np.abs(lon) <= 180))
    if len(where):
        zone = np.zeros(len(lon), np.int64)
        zone[where] = utm_zone(lon[where])
        committed = _overlay(lookup, reader, lon, lat, zone, where, won)
        other = np.zeros(len(lon), np.int64)
        other[where] = seam_zone(lon[where])
        again = where[(won.tile[where] < 0) & (other[where] > 0)]
        if len(again):
            _overlay(lookup, reader, lon, lat, other, again, won)
        ix, iy = index_from_point(lon[where], lat[where])
        own = np.isin(ix * N_LAT + iy, np.fromiter(committed, np.int64, len(committed)))
        land = landmask.contains(ix, iy)
        codes[where] = np.where(own, _CODE[NO_OBSERVATIONS], np.where(land, _CODE[PENDING], _CODE[WATER]))
    codes[won.tile >= 0] = _CODE[VALID]
    return _gather(reader, won, lon, lat, codes, dequantised)


def _gather(reader: VersionReader, won: _Winners, lon: np.ndarray, lat: np.ndarray, codes: np.ndarray,
            dequantised: bool) -> PointSamples:
    """Read the winning pixels' embeddings, tile by tile, into the result arrays."""
    n = len(lon)
    q = np.zeros((n, 128), np.int8)
    scales = np.full(n, np.nan, np.float32)
    tiles = np.full(n, "", dtype=object)
    versions = np.full(n, "", dtype=object)
    for k, ref in enumerate(won.refs):
        pts = np.flatnonzero(won.tile == k)
        if not len(pts):
            continue
        r, c = won.rc[pts, 0], won.rc[pts, 1]
        q[pts] = reader.embeddings_at(ref, r, c)
        scales[pts] = reader.scales(ref)[r, c]
        tiles[pts] = ref.tile
        versions[pts] = ref.version
    status = np.asarray(STATUSES, dtype=object)[codes]
    embeddings = dequantise(q, scales) if dequantised else q
    return PointSamples(lon=lon, lat=lat, embeddings=embeddings, scales=scales, status=status, tile=tiles,
                        version=versions)
