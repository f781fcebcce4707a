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

from tessera_pipeline.errors import TesseraError
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
