"""The 0.1 degree tile grid: names, lookup, bounds, UTM zone and each tile's 10 m raster geometry.

Follows geotessera exactly (see docs/grid-and-inputs.md): a tile is named by its centre
`grid_{lon:.2f}_{lat:.2f}` (centres at x.x5), uses the nominal UTM zone of its centre, and its raster
is the axis-aligned UTM bounding box of the projected cell at 10 m, origin not snapped.

Internally a cell is addressed by integer indices `ix = floor((lon + 180) * 10)` (0..3599, west to
east) and `iy = floor((lat + 90) * 10)` (0..1799, south to north), which avoids float round-off.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from pyproj import Transformer

from tessera_pipeline.errors import TileNameError

#: Cells per degree and grid size.
CELLS_PER_DEGREE = 10
N_LON = 360 * CELLS_PER_DEGREE
N_LAT = 180 * CELLS_PER_DEGREE
#: Pixel size of a tile raster, metres.
PIXEL_SIZE = 10.0
#: Half a cell, degrees.
HALF = 0.05

_NAME_RE = re.compile(r"^grid_(-?\d+\.\d{2})_(-?\d+\.\d{2})$")


@dataclass(frozen=True)
class TileGeometry:
    """A tile's raster: CRS (EPSG), size and GDAL-order affine transform (a, b, c, d, e, f)."""

    name: str
    lon: float
    lat: float
    epsg: int
    height: int
    width: int
    transform: tuple[float, float, float, float, float, float]

    @property
    def crs(self) -> str:
        """The CRS as an "EPSG:nnnnn" string."""
        return f"EPSG:{self.epsg}"

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the tile raster."""
        return (self.height, self.width)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: name, lon, lat, epsg, height, width, transform."""
        return {
            "name": self.name,
            "lon": self.lon,
            "lat": self.lat,
            "epsg": self.epsg,
            "height": self.height,
            "width": self.width,
            "transform": list(self.transform),
        }


# --- indices and names ----------------------------------------------------------------------------


def _centi(index: np.ndarray, offset_deg: int) -> np.ndarray:
    """Centre of cell `index` in hundredths of a degree, as exact integers."""
    return np.asarray(index, dtype=np.int64) * 10 - offset_deg * 100 + 5


def _fmt_centi(value: int) -> str:
    """Format hundredths of a degree as geotessera's `{:.2f}` does, without float round-off."""
    sign = "-" if value < 0 else ""
    mag = abs(int(value))
    return f"{sign}{mag // 100}.{mag % 100:02d}"


def index_from_point(lon: float | np.ndarray, lat: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell indices (ix, iy) of the tile containing each point; lon 180 wraps to -180, lat 90 to the top row."""
    lon_a = np.asarray(lon, dtype=np.float64)
    lat_a = np.asarray(lat, dtype=np.float64)
    if np.any(~np.isfinite(lon_a)) or np.any(~np.isfinite(lat_a)):
        raise TileNameError("coordinates must be finite")
    if np.any(np.abs(lat_a) > 90) or np.any(np.abs(lon_a) > 180):
        raise TileNameError("longitude must be within [-180, 180] and latitude within [-90, 90]")
    # The small epsilon keeps values such as 0.3 (0.29999...) in the cell users expect.
    ix = np.floor(np.round((lon_a + 180.0) * CELLS_PER_DEGREE, 9)).astype(np.int64) % N_LON
    iy = np.clip(np.floor(np.round((lat_a + 90.0) * CELLS_PER_DEGREE, 9)).astype(np.int64), 0, N_LAT - 1)
    return ix, iy


def index_from_centre(lon: float | np.ndarray, lat: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell indices of exact tile centres (x.x5); raises TileNameError for a point off the centres."""
    lon_a = np.asarray(lon, dtype=np.float64)
    lat_a = np.asarray(lat, dtype=np.float64)
    fx = (lon_a + 180.0) * CELLS_PER_DEGREE - 0.5
    fy = (lat_a + 90.0) * CELLS_PER_DEGREE - 0.5
    ix = np.round(fx).astype(np.int64)
    iy = np.round(fy).astype(np.int64)
    bad = (np.abs(fx - ix) > 1e-6) | (np.abs(fy - iy) > 1e-6) | (ix < 0) | (ix >= N_LON) | (iy < 0) | (iy >= N_LAT)
    if np.any(bad):
        where = int(np.flatnonzero(np.atleast_1d(bad))[0])
        raise TileNameError(
            f"({np.atleast_1d(lon_a)[where]}, {np.atleast_1d(lat_a)[where]}) is not a tile centre (x.x5)"
        )
    return ix, iy


def name_from_index(ix: int, iy: int) -> str:
    """Tile name of cell (ix, iy)."""
    return f"grid_{_fmt_centi(int(_centi(ix, 180)))}_{_fmt_centi(int(_centi(iy, 90)))}"


@functools.lru_cache(maxsize=1)
def _name_parts() -> tuple[list[str], list[str]]:
    """Every column's `grid_{lon}_` prefix and every row's `{lat}`, formatted once."""
    return ([f"grid_{_fmt_centi(int(v))}_" for v in _centi(np.arange(N_LON), 180).tolist()],
            [_fmt_centi(int(v)) for v in _centi(np.arange(N_LAT), 90).tolist()])


def names_from_index(ix: np.ndarray, iy: np.ndarray) -> list[str]:
    """Tile names of many cells (each column and row is formatted once, not once per tile)."""
    lons, lats = _name_parts()
    return [lons[x] + lats[y] for x, y in zip(np.asarray(ix).tolist(), np.asarray(iy).tolist())]


def tile_name(lon: float, lat: float) -> str:
    """Name of the tile centred at (lon, lat), e.g. `grid_0.15_52.05`; the centre must be on x.x5."""
    ix, iy = index_from_centre(lon, lat)
    return name_from_index(int(ix), int(iy))


def parse_tile_name(name: str) -> tuple[float, float]:
    """Centre (lon, lat) of a tile name; raises TileNameError for anything not on the grid."""
    match = _NAME_RE.match(name.strip())
    if not match:
        raise TileNameError(f"not a tile name (expected grid_<lon>_<lat>): {name!r}")
    lon, lat = float(match.group(1)), float(match.group(2))
    index_from_centre(lon, lat)
    return lon, lat


def index_from_name(name: str) -> tuple[int, int]:
    """Cell indices of a tile name."""
    ix, iy = index_from_centre(*parse_tile_name(name))
    return int(ix), int(iy)


def indices_from_names(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cell indices (ix, iy) of many tile names (looked up among the formatted columns and rows, not parsed one
    by one); TileNameError for a name off the grid."""
    lons, lats = _name_parts()
    columns = {p: i for i, p in enumerate(lons)}
    rows = {p: i for i, p in enumerate(lats)}
    ix, iy = np.empty(len(names), dtype=np.int64), np.empty(len(names), dtype=np.int64)
    try:
        for k, name in enumerate(names):
            head, _, tail = name.rpartition("_")
            ix[k], iy[k] = columns[head + "_"], rows[tail]
    except KeyError as exc:
        raise TileNameError(f"not a tile name (expected grid_<lon>_<lat> on the grid): {names[k]!r}") from exc
    return ix, iy


def tile_from_point(lon: float, lat: float) -> str:
    """Name of the tile containing the point (geotessera's `tile_from_world`)."""
    ix, iy = index_from_point(lon, lat)
    return name_from_index(int(ix), int(iy))


def tile_centre(name_or_lonlat: str | tuple[float, float]) -> tuple[float, float]:
    """Centre (lon, lat) of a tile given by name or by its centre."""
    if isinstance(name_or_lonlat, str):
        return parse_tile_name(name_or_lonlat)
    lon, lat = name_or_lonlat
    ix, iy = index_from_centre(lon, lat)
    return float(_centi(ix, 180)) / 100, float(_centi(iy, 90)) / 100


def tile_bounds(name_or_lonlat: str | tuple[float, float]) -> tuple[float, float, float, float]:
    """(west, south, east, north) of a tile in degrees: centre +- 0.05."""
    lon, lat = tile_centre(name_or_lonlat)
    return (round(lon - HALF, 2), round(lat - HALF, 2), round(lon + HALF, 2), round(lat + HALF, 2))


# --- projection -----------------------------------------------------------------------------------


def utm_zone(lon: float | np.ndarray) -> np.ndarray:
    """Nominal UTM zone of a longitude, 1..60 (no Norway/Svalbard exceptions)."""
    return np.clip(np.floor((np.asarray(lon, dtype=np.float64) + 180.0) / 6.0).astype(np.int64) + 1, 1, 60)


def utm_epsg(lon: float | np.ndarray, lat: float | np.ndarray) -> int | np.ndarray:
    """EPSG code of the UTM zone of a point: 326zz north of the equator (lat >= 0), 327zz south."""
    zone = utm_zone(lon)
    epsg = np.where(np.asarray(lat) >= 0, 32600, 32700) + zone
    return int(epsg) if epsg.ndim == 0 else epsg


@functools.lru_cache(maxsize=256)
def _transformer(epsg: int) -> Transformer:
    """Cached lon/lat -> UTM transformer for one EPSG code."""
    return Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)


def _project_cells(lon: np.ndarray, lat: np.ndarray, epsg: int) -> tuple[np.ndarray, ...]:
    """Origin (e, n) and (H, W) of cells centred at lon/lat, all in one EPSG (vectorised)."""
    tr = _transformer(epsg)
    w, e, s, n = lon - HALF, lon + HALF, lat - HALF, lat + HALF
    ul_e, ul_n = tr.transform(w, n)
    ur_e, ur_n = tr.transform(e, n)
    ll_e, ll_n = tr.transform(w, s)
    lr_e, lr_n = tr.transform(e, s)
    origin_e = np.minimum(ul_e, ll_e)
    origin_n = np.maximum(ul_n, ur_n)
    height = np.round((origin_n - np.minimum(ll_n, lr_n)) / PIXEL_SIZE).astype(np.int64)
    width = np.round((np.maximum(ur_e, lr_e) - origin_e) / PIXEL_SIZE).astype(np.int64)
    return origin_e, origin_n, height, width


def geometry_arrays(ix: np.ndarray, iy: np.ndarray) -> dict[str, np.ndarray]:
    """Raster geometry of many cells at once: lon, lat, epsg, height, width, origin_e, origin_n arrays."""
    ix = np.asarray(ix, dtype=np.int64)
    iy = np.asarray(iy, dtype=np.int64)
    lon = _centi(ix, 180) / 100.0
    lat = _centi(iy, 90) / 100.0
    epsg = np.asarray(utm_epsg(lon, lat)).reshape(lon.shape)
    out = {
        "lon": lon,
        "lat": lat,
        "epsg": epsg,
        "height": np.zeros(lon.shape, np.int64),
        "width": np.zeros(lon.shape, np.int64),
        "origin_e": np.zeros(lon.shape, np.float64),
        "origin_n": np.zeros(lon.shape, np.float64),
    }
    for code in np.unique(epsg):
        sel = epsg == code
        oe, on, h, w = _project_cells(lon[sel], lat[sel], int(code))
        out["origin_e"][sel] = oe
        out["origin_n"][sel] = on
        out["height"][sel] = h
        out["width"][sel] = w
    return out


def tile_geometry(name_or_lonlat: str | tuple[float, float]) -> TileGeometry:
    """A tile's CRS, size and transform exactly as geotessera's `project_tile` computes them."""
    ix, iy = index_from_centre(*tile_centre(name_or_lonlat))
    return geometries(np.atleast_1d(ix), np.atleast_1d(iy))[0]


def geometries(ix: np.ndarray, iy: np.ndarray) -> list[TileGeometry]:
    """`TileGeometry` objects for many cells (projection vectorised per EPSG group)."""
    g = geometry_arrays(ix, iy)
    names = names_from_index(ix, iy)
    return [
        TileGeometry(
            name=name,
            lon=float(lon),
            lat=float(lat),
            epsg=int(epsg),
            height=int(h),
            width=int(w),
            transform=(PIXEL_SIZE, 0.0, float(oe), 0.0, -PIXEL_SIZE, float(on)),
        )
        for name, lon, lat, epsg, h, w, oe, on in zip(
            names,
            g["lon"].tolist(),
            g["lat"].tolist(),
            g["epsg"].tolist(),
            g["height"].tolist(),
            g["width"].tolist(),
            g["origin_e"].tolist(),
            g["origin_n"].tolist(),
        )
    ]


# --- sets of tiles --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileSet:
    """A sorted, duplicate-free set of tiles as integer cell indices (cheap for millions of tiles)."""

    ix: np.ndarray
    iy: np.ndarray

    @classmethod
    def from_indices(cls, ix: np.ndarray, iy: np.ndarray) -> TileSet:
        """Build a set from cell indices, sorting south-to-north then west-to-east and dropping duplicates."""
        key = np.unique(np.asarray(iy, dtype=np.int64).ravel() * N_LON + np.asarray(ix, dtype=np.int64).ravel())
        return cls(ix=(key % N_LON).astype(np.int32), iy=(key // N_LON).astype(np.int32))

    @classmethod
    def from_names(cls, names: Iterable[str]) -> TileSet:
        """Build a set from tile names."""
        pairs = np.array([index_from_name(n) for n in names], dtype=np.int64).reshape(-1, 2)
        return cls.from_indices(pairs[:, 0], pairs[:, 1])

    @classmethod
    def from_mask(cls, grid: np.ndarray) -> TileSet:
        """Build a set from a (N_LAT, N_LON) boolean grid indexed [iy, ix]."""
        iy, ix = np.nonzero(grid)
        return cls(ix=ix.astype(np.int32), iy=iy.astype(np.int32))

    def __len__(self) -> int:
        """Number of tiles."""
        return int(self.ix.size)

    def __iter__(self) -> Iterator[str]:
        """Tile names in set order."""
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        """True when the tile `name` is in the set."""
        if not isinstance(name, str):
            return False
        ix, iy = index_from_name(name)
        return bool(np.any((self.ix == ix) & (self.iy == iy)))

    @property
    def lon(self) -> np.ndarray:
        """Centre longitudes."""
        return _centi(self.ix, 180) / 100.0

    @property
    def lat(self) -> np.ndarray:
        """Centre latitudes."""
        return _centi(self.iy, 90) / 100.0

    def names(self) -> list[str]:
        """Tile names in set order."""
        return names_from_index(self.ix, self.iy)

    def geometries(self) -> list[TileGeometry]:
        """Raster geometry of every tile in the set."""
        return geometries(self.ix, self.iy)

    def to_grid(self) -> np.ndarray:
        """The set as a (N_LAT, N_LON) boolean grid indexed [iy, ix]."""
        grid = np.zeros((N_LAT, N_LON), dtype=bool)
        grid[self.iy, self.ix] = True
        return grid


def cell_box_degrees(ix: np.ndarray, iy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(west, south, east, north) arrays of cells, degrees."""
    west = np.asarray(ix, dtype=np.float64) / CELLS_PER_DEGREE - 180.0
    south = np.asarray(iy, dtype=np.float64) / CELLS_PER_DEGREE - 90.0
    return west, south, west + 1.0 / CELLS_PER_DEGREE, south + 1.0 / CELLS_PER_DEGREE

