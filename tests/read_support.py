"""Shared set-up for the reader tests: a 3 x 3 block of full-size tiles near a UTM zone edge (Svalbard, where
neighbouring rasters overlap by ~55 pixels), one pending, no-data patches, and a brute-force reference reader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pyproj import Transformer

from tessera_pipeline.bench.store_bench import MODEL_ATTRS, realistic_tile
from tessera_pipeline.grid import N_LAT, N_LON, index_from_point, tile_geometry
from tessera_pipeline.landmask import LandMask
from tessera_pipeline.store import TileStore

YEAR = 2024
LONS = (17.75, 17.85, 17.95)
LATS = (79.55, 79.65, 79.75)
BLOCK = [f"grid_{lon:.2f}_{lat:.2f}" for lon in LONS for lat in LATS]
PENDING_TILE = "grid_17.95_79.75"
COMMITTED = [t for t in BLOCK if t != PENDING_TILE]
#: The 3 x 3 block's lon/lat box.
BOX = (17.70, 79.50, 18.0, 79.80)


#: Land cells far from the block in its zone, so a zone grid laid over the land reaches well past the block.
FAR_LAND = ((12.05, 60.05), (17.95, 83.95))


def landmask() -> LandMask:
    """The block's nine cells and two far cells of its zone are land: points around the block are water."""
    grid = np.zeros((N_LAT, N_LON), bool)
    for lon, lat in [(lon, lat) for lon in LONS for lat in LATS] + list(FAR_LAND):
        ix, iy = index_from_point(lon, lat)
        grid[iy, ix] = True
    return LandMask(grid=grid, source="test")


def patterned_tile(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 embeddings distinct per pixel but highly compressible (a few MB per tile on a test S3 server)."""
    r, c, b = np.ogrid[:height, :width, :128]
    emb = ((r * 7 + c * 13 + b * 3 + seed * 31) % 255 - 127).astype(np.int8)
    emb[..., 0] = 127
    scales = (0.01 + 0.001 * ((np.arange(height)[:, None] + np.arange(width)[None, :] + seed) % 50)).astype(np.float32)
    return emb, scales


def tile_arrays(tile: str, seed: int, *, compressible: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Int8 embeddings and scales of a tile's full raster (realistic statistics, or compressible), with no-data
    patches (NaN scales) in its edge columns (where neighbours overlap) and a band of rows."""
    g = tile_geometry(tile)
    emb, scales = (patterned_tile if compressible else realistic_tile)(g.height, g.width, seed=seed)
    rng = np.random.default_rng(seed)
    scales = scales.astype(np.float32)
    scales[rng.integers(0, g.height - 40):][:40] = np.nan
    for _ in range(30):
        r, c = rng.integers(0, g.height - 20), rng.choice([rng.integers(0, 40), rng.integers(g.width - 60, g.width - 10)])
        scales[r:r + 20, c:c + 10] = np.nan
    emb[np.isnan(scales)] = 0
    return emb, scales


def write_block(url: str, tiles: list[str] = COMMITTED, *, compressible: bool = False) -> TileStore:
    """A store holding `tiles` of the block, each with its true geometry."""
    store = TileStore(url)
    if store.root_attrs() is None:
        store.create(MODEL_ATTRS)
    for i, tile in enumerate(BLOCK):
        if tile not in tiles:
            continue
        g = tile_geometry(tile)
        emb, scales = tile_arrays(tile, seed=i, compressible=compressible)
        store.write_tile(YEAR, tile, emb, scales, epsg=g.epsg, transform=g.transform, provenance={})
    return store


def points(n: int, seed: int = 1) -> np.ndarray:
    """N lon/lat points over the block and a margin of water around it."""
    rng = np.random.default_rng(seed)
    west, south, east, north = BOX
    lon = rng.uniform(west - 0.02, east + 0.02, n)
    lat = rng.uniform(south - 0.01, north + 0.01, n)
    return np.stack([lon, lat], axis=1)


def brute_force(store: TileStore, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dequantised embeddings at points and the tile each reads, the slow way: every committed tile read whole
    (`read_tile(dequantise=True)`), placed on geotessera's zone grid (origin from the block's cells; floor), tiles in
    (lon, lat) order, a later tile's value kept where it is not NaN."""
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    corners = [to_utm.transform(lon + dx, lat + dy) for lon in LONS for lat in LATS
               for dx in (-0.05, 0.05) for dy in (-0.05, 0.05)]
    x0 = math.floor(min(c[0] for c in corners) / 10) * 10
    y0 = math.ceil(max(c[1] for c in corners) / 10) * 10
    x, y = to_utm.transform(pts[:, 0], pts[:, 1])
    col = np.floor((np.asarray(x) - x0) / 10).astype(int)
    row = np.floor((y0 - np.asarray(y)) / 10).astype(int)
    out = np.full((len(pts), 128), np.nan, np.float32)
    src = np.full(len(pts), "", dtype=object)
    for tile in sorted(store.list_complete(YEAR), key=lambda k: (tile_geometry(k.tile).lon, tile_geometry(k.tile).lat)):
        data = store.read_tile(YEAR, tile.tile, dequantise=True)
        a, _b, c, _d, _e, f = data.transform
        col0, row0 = math.floor((c - x0) / 10), math.floor((y0 - f) / 10)
        h, w = data.scales.shape
        for i in range(len(pts)):
            r, cc = row[i] - row0, col[i] - col0
            if 0 <= r < h and 0 <= cc < w and not np.isnan(data.embeddings[r, cc, 0]):
                out[i] = data.embeddings[r, cc]
                src[i] = tile.tile
    return out, src


def committed_path(root: Path) -> str:
    """The store's local URL under a test folder."""
    return str(root / "store.zarr")


#: A tile in the southern hemisphere (UTM zone 19 south: read on the zone's canonical 32619 axis).
SOUTH = "grid_-70.65_-33.45"


def south_landmask() -> LandMask:
    """The block's land mask plus the southern tile's cell and two far cells of its zone."""
    mask = landmask()
    for lon, lat in ((-70.65, -33.45), (-71.95, -30.05), (-66.05, -40.05)):  # the tile, and far land of its zone
        ix, iy = index_from_point(lon, lat)
        mask.grid[iy, ix] = True
    return mask


def write_south(url: str, seed: int = 20) -> None:
    """Commit the southern tile (compressible content, true geometry) into an existing store."""
    store = TileStore(url)
    g = tile_geometry(SOUTH)
    emb, scales = tile_arrays(SOUTH, seed=seed, compressible=True)
    store.write_tile(YEAR, SOUTH, emb, scales, epsg=g.epsg, transform=g.transform, provenance={})


def south_points(n: int, seed: int = 4) -> np.ndarray:
    """N points over the southern tile's cell and a margin of water."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-70.72, -70.58, n), rng.uniform(-33.52, -33.38, n)], axis=1)


def edge_points(n: int, seed: int = 7, zone: int = 33) -> np.ndarray:
    """Points over the block whose projection lies exactly on a 10 m pixel edge (x, y or both): the ties a point
    reader must break as geotessera does. Drawn at random, snapped to an edge, kept where they project back exactly."""
    from tessera_pipeline.read import lattice

    rng = np.random.default_rng(seed)
    west, south, east, north = BOX
    x, y = lattice.project(rng.uniform(west, east, 3 * n), rng.uniform(south, north, 3 * n), zone)
    which = rng.integers(0, 3, 3 * n)
    x = np.where(which != 1, np.round(x / 10) * 10, x)
    y = np.where(which != 0, np.round(y / 10) * 10, y)
    lon, lat = lattice.unproject(x, y, zone)
    x2, y2 = lattice.project(lon, lat, zone)
    exact = (x2 == x) & (y2 == y)
    return np.stack([lon[exact], lat[exact]], axis=1)[:n]
