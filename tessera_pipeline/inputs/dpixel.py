"""Open and validate one tile's d-pixel arrays from a local directory or an `s3://` prefix.

Layout: `{root}/{year}/{tile}/` holds upstream's seven .npy files (see `tile.DPIXEL_FILES`) and, for
tiles that are not the grid's full size (retiler patches, reduced demo tiles), a `roi.tiff` that
declares the raster the arrays are on. Arrays stay memory-mapped; from S3 they are first streamed to a
local cache. Any defect raises a typed `InputError` naming the tile, the file and the problem.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from tessera_pipeline.errors import GeoreferenceError, TesseraError
from tessera_pipeline.grid import TileGeometry, parse_tile_name, tile_geometry
from tessera_pipeline.inputs import s3
from tessera_pipeline.inputs.tile import DPIXEL_FILES, DPixelTile
from tessera_pipeline.inputs.validate import open_npy, read_roi_geometry, validate_arrays

log = logging.getLogger(__name__)

#: Optional per-tile georeference, as upstream's retiler writes it.
ROI_FILE = "roi.tiff"


def tile_location(root: str | os.PathLike[str], year: int | str, tile: str) -> str:
    """The location of a tile directory: `{root}/{year}/{tile}` (a local path or an s3:// URL)."""
    return f"{str(root).rstrip('/')}/{year}/{tile}"


def _grid_geometry(name: str) -> TileGeometry | None:
    """The grid geometry of a tile named `grid_<lon>_<lat>`, or None for other names (e.g. fixtures)."""
    try:
        parse_tile_name(name)
    except TesseraError:
        return None
    return tile_geometry(name)


def _local_files(location: str, tile: str, cache_dir: Path | None) -> tuple[Path, dict[str, str]]:
    """Local directory holding the tile's files (fetching from S3 first) and each file's display name."""
    if s3.is_s3(location):
        base = location.rstrip("/")
        for fname in DPIXEL_FILES:
            s3.fetch(f"{base}/{fname}", tile=tile, cache_dir=cache_dir)
        s3.fetch(f"{base}/{ROI_FILE}", tile=tile, cache_dir=cache_dir, required=False)
        local = s3.cache_path(base, cache_dir)
        labels = {fname[:-4]: f"{base}/{fname}" for fname in DPIXEL_FILES}
        return local, labels
    local = Path(location)
    return local, {fname[:-4]: str(local / fname) for fname in DPIXEL_FILES}


def open_tile(
    location: str | os.PathLike[str],
    *,
    name: str | None = None,
    validate: bool = True,
    cache_dir: Path | None = None,
) -> DPixelTile:
    """Memory-map and validate the d-pixel arrays of a tile directory (local path or s3:// URL).

    `name` defaults to the directory name. The arrays' H x W is checked against the directory's
    `roi.tiff` when present, else against the grid geometry when the name is a grid tile name.
    """
    loc = str(location)
    tile = name or loc.rstrip("/").rsplit("/", 1)[-1]
    local, labels = _local_files(loc, tile, cache_dir)
    arrays: dict[str, np.ndarray] = {}
    for fname in DPIXEL_FILES:
        key = fname[:-4]
        arrays[key] = open_npy(local / fname, tile=tile, file=labels[key])
    roi = local / ROI_FILE
    geometry: TileGeometry | None
    if roi.is_file():
        grid = _grid_geometry(tile)
        lon, lat = (grid.lon, grid.lat) if grid else (float("nan"), float("nan"))
        label = f"{loc.rstrip('/')}/{ROI_FILE}" if s3.is_s3(loc) else str(roi)
        geometry = read_roi_geometry(roi, tile=tile, file=label, lon=lon, lat=lat)
    else:
        geometry = _grid_geometry(tile)
    if validate:
        validate_arrays(
            arrays, tile=tile, files=labels, shape=(geometry.height, geometry.width) if geometry else None
        )
    log.debug("opened tile %s from %s", tile, loc)
    return DPixelTile(name=tile, geometry=geometry, **arrays)


def open_tile_at(
    root: str | os.PathLike[str],
    year: int | str,
    tile: str,
    *,
    validate: bool = True,
    cache_dir: Path | None = None,
) -> DPixelTile:
    """Open the tile `{root}/{year}/{tile}/` (local or s3://), validated; see `open_tile`."""
    return open_tile(tile_location(root, year, tile), name=tile, validate=validate, cache_dir=cache_dir)


#: Largest misalignment, in pixels, of a roi.tiff's origin from the tile's pixel grid.
ALIGN_TOLERANCE_PX = 0.05


def tile_directory_name(location: str | os.PathLike[str]) -> str:
    """The last component of a tile directory (local path or s3:// URL)."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def check_input_name(location: str | os.PathLike[str], tile: str) -> None:
    """Refuse an input directory named like another grid tile than `tile` (before anything is read)."""
    dir_name = tile_directory_name(location)
    if _grid_geometry_name(dir_name) and dir_name != tile:
        raise GeoreferenceError(
            f"the input directory is tile {dir_name}, not {tile}: its pixels would be stored with {tile}'s "
            "georeference (rename the directory or drop --tile)",
            tile=tile, file=str(location),
        )


def _grid_geometry_name(name: str) -> bool:
    """True when `name` is a grid tile name."""
    try:
        parse_tile_name(name)
    except TesseraError:
        return False
    return True


def georeference_for(tile: DPixelTile, name: str, *, file: str | None = None) -> TileGeometry:
    """The georeference to record for `tile` stored as grid tile `name`; refuses one that disagrees.

    Without a roi.tiff the arrays must be the grid tile's full size. With one, the roi raster must be
    in the tile's UTM zone, at 10 m, aligned with the tile's pixel grid and inside the tile (a reduced
    or partial tile): anything else is another tile's data or a wrong size, a GeoreferenceError.
    """
    grid = tile_geometry(name)
    own = tile.geometry
    label = file or name
    if own is None or (own.epsg, own.transform, own.shape) == (grid.epsg, grid.transform, grid.shape):
        if (tile.height, tile.width) != grid.shape:
            raise GeoreferenceError(
                f"arrays are {tile.height} x {tile.width} but {name} is {grid.height} x {grid.width}",
                tile=name, file=label,
            )
        return grid
    a, b, c, d, e, f = own.transform
    if own.epsg != grid.epsg:
        raise GeoreferenceError(f"{ROI_FILE} is in EPSG:{own.epsg}, but {name} is in EPSG:{grid.epsg}", tile=name, file=label)
    if (a, b, d, e) != (grid.transform[0], 0.0, 0.0, grid.transform[4]):
        raise GeoreferenceError(f"{ROI_FILE} is not a north-up 10 m raster: transform {own.transform}", tile=name, file=label)
    col = (c - grid.transform[2]) / grid.transform[0]
    row = (f - grid.transform[5]) / grid.transform[4]
    r0, c0 = int(round(row)), int(round(col))
    if r0 < 0 or c0 < 0 or r0 + own.height > grid.height or c0 + own.width > grid.width:
        raise GeoreferenceError(
            f"{ROI_FILE} raster ({own.height} x {own.width} at row {r0}, column {c0}) does not lie inside {name} "
            f"({grid.height} x {grid.width}): another tile's data, or larger than the tile",
            tile=name, file=label,
        )
    if abs(col - c0) > ALIGN_TOLERANCE_PX or abs(row - r0) > ALIGN_TOLERANCE_PX:
        raise GeoreferenceError(
            f"{ROI_FILE} origin ({c:.2f}, {f:.2f}) is not on {name}'s pixel grid (offset {col:.2f}, {row:.2f} px)",
            tile=name, file=label,
        )
    return TileGeometry(name, grid.lon, grid.lat, own.epsg, own.height, own.width, own.transform)
