"""Which 0.1 degree tiles are land: the embedded GLOBE mask, a user's tile list, or a GeoTIFF mask.

Every source is reduced to one boolean grid of shape (1800, 3600) indexed [iy, ix] (see grid.py), so
selections, counts and intersections are plain numpy and a whole-globe count takes seconds.

Embedded rule: a tile is land when any ~1 km cell of the GLOBE land mask (shipped by the
`global-land-mask` package) inside it is land, restricted to tiles whose centre lies between 60 S and
84 N. This gives 1,598,651 tiles, +0.32 % against the published v1.1 figure of 1,593,480
(docs/grid-and-inputs.md records the comparison and why no dilation is applied).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tessera_pipeline.errors import LandMaskError, RegionError
from tessera_pipeline.grid import CELLS_PER_DEGREE, N_LAT, N_LON, TileSet, index_from_point

log = logging.getLogger(__name__)

#: Latitude band of the embedded mask (tile centres), degrees.
GLOBE_SOUTH = -60.0
GLOBE_NORTH = 84.0
#: The GLOBE mask in global-land-mask: 21600 x 43200, 120 cells per degree, row 0 at 90 N, True = ocean.
_GLOBE_FILE = "globe_combined_mask_compressed.npz"
_GLOBE_SHAPE = (180 * 120, 360 * 120)


@dataclass(frozen=True)
class LandMask:
    """A land/water flag per 0.1 degree tile: `grid[iy, ix]` is True for land. `source` says where from."""

    grid: np.ndarray
    source: str

    def count(self) -> int:
        """Number of land tiles."""
        return int(np.count_nonzero(self.grid))

    def tiles(self) -> TileSet:
        """All land tiles as a TileSet."""
        return TileSet.from_mask(self.grid)

    def contains(self, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
        """Boolean array: is each cell (ix, iy) land."""
        return self.grid[np.asarray(iy, dtype=np.int64), np.asarray(ix, dtype=np.int64)]

    def restrict(self, tiles: TileSet) -> TileSet:
        """The tiles of `tiles` that are land."""
        keep = self.contains(tiles.ix, tiles.iy)
        return TileSet(ix=tiles.ix[keep], iy=tiles.iy[keep])


def _globe_path() -> Path:
    """Location of the GLOBE mask file inside the installed global-land-mask package."""
    spec = importlib.util.find_spec("global_land_mask")
    if spec is None or not spec.submodule_search_locations:
        raise LandMaskError("the global-land-mask package is not installed (pip install global-land-mask)")
    path = Path(next(iter(spec.submodule_search_locations))) / _GLOBE_FILE
    if not path.is_file():
        raise LandMaskError(f"{path}: GLOBE mask file missing from the global-land-mask package")
    return path


def _read_npy_header(stream: zipfile.ZipExtFile) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Read an .npy header from a stream, leaving it at the first data byte."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    return shape, fortran, dtype


@functools.lru_cache(maxsize=1)
def globe_land_grid() -> np.ndarray:
    """The embedded mask reduced to tiles, streamed from the compressed file (a few MB of memory)."""
    path = _globe_path()
    per_cell = 120 // CELLS_PER_DEGREE  # GLOBE cells per tile edge: 12
    ncols = _GLOBE_SHAPE[1]
    # Land anywhere in a block of 12 GLOBE rows x 12 columns makes the tile land.
    land_rows = np.zeros((N_LAT, N_LON), dtype=bool)  # row 0 = north here, flipped below
    with zipfile.ZipFile(path) as archive, archive.open("mask.npy") as stream:
        shape, fortran, dtype = _read_npy_header(stream)
        if tuple(shape) != _GLOBE_SHAPE or dtype != np.bool_ or fortran:
            raise LandMaskError(f"{path}: unexpected GLOBE mask layout {shape} {dtype}")
        block_bytes = per_cell * ncols
        first = int(round((90.0 - GLOBE_NORTH) * CELLS_PER_DEGREE))
        last = int(round((90.0 - GLOBE_SOUTH) * CELLS_PER_DEGREE))
        for row in range(last):
            buf = stream.read(block_bytes)
            if len(buf) != block_bytes:
                raise LandMaskError(f"{path}: GLOBE mask truncated at tile row {row}")
            if row < first:
                continue
            ocean = np.frombuffer(buf, dtype=np.bool_).reshape(per_cell, N_LON, per_cell)
            land_rows[row] = ~ocean.all(axis=(0, 2))
    grid = land_rows[::-1].copy()
    log.info("GLOBE land mask: %d land tiles between %s and %s", int(grid.sum()), GLOBE_SOUTH, GLOBE_NORTH)
    return grid


def globe_landmask() -> LandMask:
    """The embedded default land mask (GLOBE, any-cell rule, 60 S to 84 N)."""
    return LandMask(grid=globe_land_grid(), source="globe")


def all_cells_mask() -> LandMask:
    """A mask that treats every cell on Earth as land (for oceans, tests and synthetic runs)."""
    return LandMask(grid=np.ones((N_LAT, N_LON), dtype=bool), source="none")


def read_tile_list(path: str | Path) -> TileSet:
    """Read tiles from CSV/Parquet (columns lon,lat or name/tile) or a text file of tile names."""
    path = Path(path)
    if not path.is_file():
        raise LandMaskError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif suffix in (".csv", ".tsv"):
            import pyarrow.csv as pacsv

            delimiter = "\t" if suffix == ".tsv" else ","
            table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter))
        else:
            lines = [ln.strip() for ln in path.read_text().splitlines()]
            return TileSet.from_names(ln for ln in lines if ln and not ln.startswith("#"))
    except RegionError as exc:
        raise LandMaskError(f"{path}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise LandMaskError(f"{path}: cannot read tile list ({exc})") from exc
    columns = {c.lower(): c for c in table.column_names}
    if "lon" in columns and "lat" in columns:
        lon = np.asarray(table.column(columns["lon"]).to_numpy(zero_copy_only=False), dtype=np.float64)
        lat = np.asarray(table.column(columns["lat"]).to_numpy(zero_copy_only=False), dtype=np.float64)
        try:
            ix, iy = index_from_point(lon, lat)
        except RegionError as exc:
            raise LandMaskError(f"{path}: {exc}") from exc
        return TileSet.from_indices(ix, iy)
    for key in ("name", "tile", "tile_name", "tile_id"):
        if key in columns:
            names = [str(v) for v in table.column(columns[key]).to_pylist()]
            try:
                return TileSet.from_names(names)
            except RegionError as exc:
                raise LandMaskError(f"{path}: {exc}") from exc
    raise LandMaskError(f"{path}: needs lon,lat columns or a name column, found {table.column_names}")


def list_landmask(path: str | Path) -> LandMask:
    """A land mask made of the tiles a user lists (CSV/Parquet/text, see `read_tile_list`)."""
    tiles = read_tile_list(path)
    return LandMask(grid=tiles.to_grid(), source=str(path))


def geotiff_landmask(path: str | Path, *, rows_per_block: int = 1024) -> LandMask:
    """A land mask from a GeoTIFF: a tile is land when any nonzero pixel lies in it.

    In EPSG:4326 each nonzero pixel marks every cell its footprint overlaps; in another CRS its centre
    is projected to lon/lat. Read in row blocks so a large mask needs bounded memory.
    """
    import rasterio
    from pyproj import CRS, Transformer
    from rasterio.windows import Window

    path = Path(path)
    grid = np.zeros((N_LAT, N_LON), dtype=bool)
    try:
        src_ctx = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise LandMaskError(f"{path}: cannot open GeoTIFF mask ({exc})") from exc
    with src_ctx as src:
        if src.crs is None:
            raise LandMaskError(f"{path}: GeoTIFF mask has no CRS")
        crs = CRS.from_user_input(src.crs.to_wkt())
        geographic = crs.is_geographic
        to_lonlat = None if geographic else Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        a, b, c, d, e, f = src.transform[:6]
        nodata = src.nodata
        for row0 in range(0, src.height, rows_per_block):
            nrows = min(rows_per_block, src.height - row0)
            data = src.read(1, window=Window(0, row0, src.width, nrows))
            valid = data != 0
            if nodata is not None and nodata != 0:
                valid &= data != nodata
            rows, cols = np.nonzero(valid)
            if rows.size == 0:
                continue
            rows = rows + row0
            if geographic:
                _mark_footprints(grid, rows, cols, (a, b, c, d, e, f))
            else:
                x = c + (cols + 0.5) * a + (rows + 0.5) * b
                y = f + (cols + 0.5) * d + (rows + 0.5) * e
                lon, lat = to_lonlat.transform(x, y)  # type: ignore[union-attr]
                ok = np.isfinite(lon) & np.isfinite(lat)
                ix, iy = index_from_point(lon[ok], lat[ok])
                grid[iy, ix] = True
    return LandMask(grid=grid, source=str(path))


def _mark_footprints(
    grid: np.ndarray, rows: np.ndarray, cols: np.ndarray, transform: tuple[float, ...]
) -> None:
    """Mark every cell that the footprints of lon/lat pixels (rows, cols) overlap."""
    a, _b, c, _d, e, f = transform
    lon0 = c + cols * a
    lon1 = lon0 + a
    lat0 = f + rows * e
    lat1 = lat0 + e
    west, east = np.minimum(lon0, lon1), np.maximum(lon0, lon1)
    south, north = np.clip(np.minimum(lat0, lat1), -90, 90), np.clip(np.maximum(lat0, lat1), -90, 90)
    # First and last cell index each footprint touches (edges on a cell boundary do not spill over).
    eps = 1e-9
    ix0 = np.floor((west + 180.0) * CELLS_PER_DEGREE + eps).astype(np.int64)
    ix1 = np.ceil((east + 180.0) * CELLS_PER_DEGREE - eps).astype(np.int64) - 1
    iy0 = np.clip(np.floor((south + 90.0) * CELLS_PER_DEGREE + eps).astype(np.int64), 0, N_LAT - 1)
    iy1 = np.clip(np.ceil((north + 90.0) * CELLS_PER_DEGREE - eps).astype(np.int64) - 1, 0, N_LAT - 1)
    ix1 = np.maximum(ix1, ix0)
    iy1 = np.maximum(iy1, iy0)
    span_x = int((ix1 - ix0).max()) + 1
    span_y = int((iy1 - iy0).max()) + 1
    # Loops run over the (small) number of cells one pixel spans, never over pixels.
    for dy in range(span_y):
        for dx in range(span_x):
            ok = (ix0 + dx <= ix1) & (iy0 + dy <= iy1)
            grid[(iy0 + dy)[ok], (ix0 + dx)[ok] % N_LON] = True


def load_landmask(spec: str | Path | None = "globe") -> LandMask:
    """A land mask from a CLI spec: "globe" (default), "none" (every cell), a tile list or a GeoTIFF."""
    if spec is None or str(spec).lower() in ("globe", "default", ""):
        return globe_landmask()
    if str(spec).lower() in ("none", "all"):
        return all_cells_mask()
    path = Path(spec)
    if not path.exists():
        raise LandMaskError(f"{path}: land mask not found (use globe, none, a CSV/Parquet list or a GeoTIFF)")
    if path.suffix.lower() in (".tif", ".tiff"):
        return geotiff_landmask(path)
    return list_landmask(path)
