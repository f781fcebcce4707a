"""geotessera's UTM-zone pixel grid: where a tile's pixels and a point land on a zone's 10 m lattice.

Every tile of a zone is placed on one 10 m grid in the zone's canonical CRS, EPSG:326zz (southern
northings shifted by -10,000,000, so the axis is continuous across the equator). A tile moves to
the lattice by floor, as geotessera 0.11.0's writer places it: `col0 = floor((x_tile - X0) / 10)`,
`row0 = floor((Y0 - y_tile) / 10)`, each tile moving up to 10 m west and north. The zone origin
(X0, Y0) is a multiple of 10 m, so a pixel's place relative to any other pixel of the zone does not
depend on it: here pixels are indexed on the global lattice `col = floor(x / 10)`,
`row = floor(-y / 10)`, and a zone grid only adds its origin (`ZoneGrid`). A point reads the pixel whose centre
is nearest; a point exactly on a pixel edge goes west and north, as geotessera 0.11.0's reader breaks ties.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pyproj import Transformer

from tessera_pipeline.grid import HALF, PIXEL_SIZE, utm_zone

#: Northing offset of southern UTM zones (EPSG:327zz) against the canonical 326zz axis.
SOUTH_FALSE_NORTHING = 10_000_000.0
#: geotessera's zone grids are whole shards of this many pixels.
SHARD_SIZE = 4096


def canonical_epsg(zone: int) -> int:
    """The CRS every tile of a zone is read in: EPSG:326zz, both hemispheres."""
    return 32600 + int(zone)


def zone_of_epsg(epsg: int) -> int:
    """The UTM zone of a 326zz or 327zz EPSG code."""
    return int(epsg) % 100


def canonical_northing(northing: float | np.ndarray, epsg: int) -> float | np.ndarray:
    """A northing in `epsg` on the zone's canonical 326zz axis (southern zones shifted by -10,000,000)."""
    return northing - SOUTH_FALSE_NORTHING if 32701 <= int(epsg) <= 32760 else northing


@functools.lru_cache(maxsize=128)
def _to_zone(zone: int) -> Transformer:
    """Cached lon/lat -> canonical zone CRS transformer."""
    return Transformer.from_crs("EPSG:4326", f"EPSG:{canonical_epsg(zone)}", always_xy=True)


@functools.lru_cache(maxsize=128)
def _from_zone(zone: int) -> Transformer:
    """Cached canonical zone CRS -> lon/lat transformer."""
    return Transformer.from_crs(f"EPSG:{canonical_epsg(zone)}", "EPSG:4326", always_xy=True)


def project(lon: np.ndarray, lat: np.ndarray, zone: int) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat arrays to (easting, northing) in the zone's canonical CRS."""
    x, y = _to_zone(int(zone)).transform(np.asarray(lon, np.float64), np.asarray(lat, np.float64))
    return np.asarray(x, np.float64), np.asarray(y, np.float64)


def unproject(x: np.ndarray, y: np.ndarray, zone: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical zone (easting, northing) arrays back to lon/lat."""
    lon, lat = _from_zone(int(zone)).transform(np.asarray(x, np.float64), np.asarray(y, np.float64))
    return np.asarray(lon, np.float64), np.asarray(lat, np.float64)


def _nearest_centre(v: np.ndarray, *, upper_wins_ties: bool) -> np.ndarray:
    """Index k of the lattice centre (k + 0.5) * 10 nearest each coordinate, with geotessera 0.11.0's arithmetic:
    the centres c_k < v <= c_k+1 around it, their distances compared as floats; a tie takes the lower one unless
    `upper_wins_ties`."""
    v = np.asarray(v, np.float64)
    k = np.floor(v / PIXEL_SIZE - 0.5)
    k = np.where((k + 0.5) * PIXEL_SIZE >= v, k - 1, k)
    k = np.where((k + 1.5) * PIXEL_SIZE < v, k + 1, k)
    below, above = v - (k + 0.5) * PIXEL_SIZE, (k + 1.5) * PIXEL_SIZE - v
    lower = below < above if upper_wins_ties else below <= above
    return np.where(lower, k, k + 1).astype(np.int64)


def pixel_of(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global lattice (row, col) of the 10 m pixels whose centres are nearest canonical points (x, y).

    A point exactly on a pixel edge goes west and north, as geotessera 0.11.0's reader breaks the tie."""
    return -_nearest_centre(y, upper_wins_ties=True) - 1, _nearest_centre(x, upper_wins_ties=False)


def tile_origin(transform: Iterable[float], epsg: int) -> tuple[int, int]:
    """Global lattice (row0, col0) of a tile's first pixel: its unsnapped corner floored, as geotessera places it."""
    a, _b, c, _d, _e, f = (float(v) for v in transform)
    return math.floor(-float(canonical_northing(f, epsg)) / PIXEL_SIZE), math.floor(c / PIXEL_SIZE)


def pixel_centres(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (x, y) of the centres of lattice pixels."""
    return (np.asarray(cols, np.float64) + 0.5) * PIXEL_SIZE, -(np.asarray(rows, np.float64) + 0.5) * PIXEL_SIZE


@dataclass(frozen=True)
class ZoneGrid:
    """One UTM zone's pixel grid as geotessera lays it out: origin, size (whole shards) and CRS."""

    zone: int
    origin_x: float
    origin_y: float
    width: int
    height: int

    @property
    def epsg(self) -> int:
        """The grid's CRS: the zone's canonical EPSG:326zz."""
        return canonical_epsg(self.zone)

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """Affine coefficients (a, b, c, d, e, f) of the grid."""
        return (PIXEL_SIZE, 0.0, self.origin_x, 0.0, -PIXEL_SIZE, self.origin_y)

    @property
    def row_offset(self) -> int:
        """Global lattice row of the grid's first row."""
        return round(-self.origin_y / PIXEL_SIZE)

    @property
    def col_offset(self) -> int:
        """Global lattice column of the grid's first column."""
        return round(self.origin_x / PIXEL_SIZE)


def zone_grid(zone: int, lons: np.ndarray, lats: np.ndarray) -> ZoneGrid:
    """The zone grid over the land tiles centred at (lons, lats), exactly as geotessera's `zarr-init` computes it:
    the union of the cells' projected corner boxes, origin floored (x) and ceiled (y) to 10 m, size rounded up to
    whole 4096-pixel shards."""
    lons, lats = np.asarray(lons, np.float64), np.asarray(lats, np.float64)
    if not len(lons):
        raise ValueError(f"zone {zone}: no land tiles to lay a grid over")
    xs, ys = [], []
    for dlon, dlat in ((-HALF, HALF), (HALF, HALF), (-HALF, -HALF), (HALF, -HALF)):
        x, y = project(lons + dlon, lats + dlat, zone)
        xs.append(x)
        ys.append(y)
    min_x, max_x = float(np.min(xs)), float(np.max(xs))
    min_y, max_y = float(np.min(ys)), float(np.max(ys))
    origin_x = math.floor(min_x / PIXEL_SIZE) * PIXEL_SIZE
    origin_y = math.ceil(max_y / PIXEL_SIZE) * PIXEL_SIZE
    width = round((math.ceil(max_x / PIXEL_SIZE) * PIXEL_SIZE - origin_x) / PIXEL_SIZE)
    height = round((origin_y - math.floor(min_y / PIXEL_SIZE) * PIXEL_SIZE) / PIXEL_SIZE)
    return ZoneGrid(zone=int(zone), origin_x=origin_x, origin_y=origin_y,
                    width=math.ceil(width / SHARD_SIZE) * SHARD_SIZE, height=math.ceil(height / SHARD_SIZE) * SHARD_SIZE)


def zones_of(lon: np.ndarray) -> np.ndarray:
    """Nominal UTM zone of each longitude (the zone whose grid holds a point)."""
    return utm_zone(lon)
