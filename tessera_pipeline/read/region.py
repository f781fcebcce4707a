"""A lon/lat box as one lazy (dask) xarray DataArray (band, y, x) on its UTM zone's 10 m grid.

Within one zone the pixels are the tiles' own, placed on geotessera's zone lattice (floor snapping)
and overlaid in (lon, lat) order where the later tile has data: nothing is resampled. A box across
zones, or another CRS asked for, is resampled by nearest neighbour (each output pixel takes the zone
pixel its centre falls in, through the point reader); the result's attributes say which.
Chunks are computed on demand, so a region of any size is read in bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera_pipeline.errors import RegionError
from tessera_pipeline.grid import CELLS_PER_DEGREE, N_LAT, PIXEL_SIZE, index_from_point, names_from_index, utm_zone
from tessera_pipeline.read import lattice
from tessera_pipeline.read.index import TileRef
from tessera_pipeline.read.points import PointSamples
from tessera_pipeline.read.tiles import VersionReader, dequantise, valid_scale

#: Default chunk edge in pixels: 512 x 512 x 128 float32 is 128 MB.
CHUNK = 512
#: Points per edge when projecting a box's outline (a UTM box of a lon/lat box bulges).
EDGE_POINTS = 33

Bbox = tuple[float, float, float, float]


def check_bbox(bbox: Bbox) -> Bbox:
    """(west, south, east, north) in degrees, validated."""
    west, south, east, north = (float(v) for v in bbox)
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise RegionError(f"bbox {bbox}: expected west < east within [-180, 180] and south < north within [-90, 90]")
    return west, south, east, north


def outline(bbox: Bbox) -> tuple[np.ndarray, np.ndarray]:
    """Densified outline of a lon/lat box."""
    west, south, east, north = bbox
    t = np.linspace(0.0, 1.0, EDGE_POINTS)
    lon = np.concatenate([west + (east - west) * t, np.full_like(t, east), east - (east - west) * t, np.full_like(t, west)])
    lat = np.concatenate([np.full_like(t, south), south + (north - south) * t, np.full_like(t, north), north - (north - south) * t])
    return lon, lat


def zones_spanned(bbox: Bbox) -> list[int]:
    """UTM zones a box touches."""
    west, _s, east, _n = bbox
    return list(range(int(utm_zone(west)), int(utm_zone(max(east - 1e-9, west))) + 1))


@dataclass(frozen=True)
class Placed:
    """A tile version and its rectangle on the zone lattice (global rows/cols, half-open)."""

    ref: TileRef
    row0: int
    col0: int

    @property
    def row1(self) -> int:
        """One past the tile's last lattice row."""
        return self.row0 + self.ref.height

    @property
    def col1(self) -> int:
        """One past the tile's last lattice column."""
        return self.col0 + self.ref.width


def placed(refs: Iterable[TileRef]) -> list[Placed]:
    """Tile versions on the zone lattice, in overlay order (a later one wins where it has data)."""
    return [Placed(ref, *lattice.tile_origin(ref.transform, ref.epsg)) for ref in sorted(refs, key=lambda r: r.overlay_order)]


def cells_around(bbox: Bbox, zone: int) -> list[str]:
    """Names of the cells of `zone` a box touches, and one cell around (their rasters reach into the box)."""
    west, south, east, north = bbox
    ix0, iy0 = index_from_point(west, south)
    ix1, iy1 = index_from_point(min(east, 180.0 - 1e-9), min(north, 90.0 - 1e-9))
    ix = np.arange(int(ix0) - 1, int(ix1) + 2)
    iy = np.arange(max(int(iy0) - 1, 0), min(int(iy1) + 2, N_LAT))
    ix = ix[utm_zone(ix / CELLS_PER_DEGREE - 180.0 + 0.05) == zone]
    gx, gy = np.meshgrid(ix, iy, indexing="ij")
    return names_from_index(gx.ravel(), gy.ravel())


class ZoneMosaic:
    """Lazily composited pixels of a zone lattice window: `[rows, cols]` slices give int8 (h, w, 128) and scales."""

    def __init__(self, reader: VersionReader, placed: list[Placed], row0: int, col0: int, height: int, width: int) -> None:
        self.reader = reader
        self.placed = placed
        self.row0, self.col0 = row0, col0
        self.shape = (height, width)

    def read(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """int8 embeddings (h, w, 128) and scales (h, w, NaN: no data) of a window of the mosaic."""
        r0, r1 = self.row0 + (rows.start or 0), self.row0 + (rows.stop if rows.stop is not None else self.shape[0])
        c0, c1 = self.col0 + (cols.start or 0), self.col0 + (cols.stop if cols.stop is not None else self.shape[1])
        q = np.zeros((max(r1 - r0, 0), max(c1 - c0, 0), 128), np.int8)
        s = np.full(q.shape[:2], np.nan, np.float32)
        for p in self.placed:
            a0, a1, b0, b1 = max(r0, p.row0), min(r1, p.row1), max(c0, p.col0), min(c1, p.col1)
            if a0 >= a1 or b0 >= b1:
                continue
            tq, ts = self.reader.window(p.ref, slice(a0 - p.row0, a1 - p.row0), slice(b0 - p.col0, b1 - p.col0))
            has = valid_scale(ts)
            q[a0 - r0:a1 - r0, b0 - c0:b1 - c0][has] = tq[has]
            s[a0 - r0:a1 - r0, b0 - c0:b1 - c0][has] = ts[has]
        return q, s


class _Chunks:
    """A `dask.array.from_array` source: band-first blocks of a `[rows, cols] -> (q, s)` window reader."""

    def __init__(self, read: Callable[[slice, slice], tuple[np.ndarray, np.ndarray]], shape: tuple[int, int],
                 kind: str) -> None:
        self._read = read
        self.kind = kind
        self.shape = (128, *shape) if kind != "scales" else shape
        self.dtype = np.dtype({"dequantised": np.float32, "int8": np.int8, "scales": np.float32}[kind])
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        """The block at `key` (band, y, x slices; y, x for scales)."""
        bands, rows, cols = key if self.kind != "scales" else (slice(None), *key)
        q, s = self._read(rows, cols)
        if self.kind == "scales":
            return s
        q = q[..., bands]
        values = dequantise(q, s) if self.kind == "dequantised" else q
        return np.moveaxis(values, -1, 0)


def lazy(read: Callable[[slice, slice], tuple[np.ndarray, np.ndarray]], shape: tuple[int, int], kind: str,
         chunk: int) -> Any:
    """A dask array over a window reader."""
    import dask.array as da

    source = _Chunks(read, shape, kind)
    chunks = (128, chunk, chunk) if kind != "scales" else (chunk, chunk)
    return da.from_array(source, chunks=chunks, asarray=False, fancy=False, meta=np.empty((0,) * source.ndim, source.dtype),
                         name=False, lock=False)


def sampled_window(sample: Callable[[np.ndarray, np.ndarray], PointSamples], to_lonlat: Callable[..., Any],
                   x0: float, y0: float, res: float) -> Callable[[slice, slice], tuple[np.ndarray, np.ndarray]]:
    """A window reader of a target grid (origin x0, y0; square `res` pixels) by the point reader: nearest neighbour."""

    def read(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        r = np.arange(rows.start, rows.stop)
        c = np.arange(cols.start, cols.stop)
        gx, gy = np.meshgrid(x0 + (c + 0.5) * res, y0 - (r + 0.5) * res)
        lon, lat = to_lonlat(gx.ravel(), gy.ravel())
        got = sample(np.asarray(lon), np.asarray(lat))
        h, w = len(r), len(c)
        return got.embeddings.reshape(h, w, 128), got.scales.reshape(h, w)

    return read


def zone_window(bbox: Bbox, zone: int) -> tuple[int, int, int, int]:
    """Global lattice (row0, col0, height, width) covering a box in a zone."""
    lon, lat = outline(bbox)
    x, y = lattice.project(lon, lat, zone)
    rows, cols = lattice.pixel_of(x, y)
    row0, col0 = int(rows.min()), int(cols.min())
    return row0, col0, int(rows.max()) - row0 + 1, int(cols.max()) - col0 + 1


def target_grid(bbox: Bbox, crs: Any, res: float) -> tuple[float, float, int, int]:
    """Origin (x0, y0) and size of a `res` grid in `crs` covering a box, origin snapped to whole pixels."""
    from pyproj import Transformer

    lon, lat = outline(bbox)
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    x0, y1 = math.floor(float(np.min(x)) / res) * res, math.ceil(float(np.max(y)) / res) * res
    width = max(math.ceil((float(np.max(x)) - x0) / res), 1)
    height = max(math.ceil((y1 - float(np.min(y))) / res), 1)
    return x0, y1, height, width


def default_res(crs: Any) -> float:
    """Pixel size for a CRS asked for without one: 10 m, or 0.0001 degree (~10 m) for a geographic CRS."""
    from pyproj import CRS

    return 1e-4 if CRS.from_user_input(crs).is_geographic else PIXEL_SIZE
