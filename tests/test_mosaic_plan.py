"""`mosaic`'s planning over tiles of every zone: each zone's grid is laid over that zone's land and tiles exactly
(geotessera's rule), and each shard lists its tiles in overlay order, however the tiles come in."""

from __future__ import annotations

import random

import numpy as np

from tessera_pipeline.bench.mosaic_bench import global_refs
from tessera_pipeline.grid import CELLS_PER_DEGREE, parse_tile_name, utm_zone
from tessera_pipeline.landmask import load_landmask
from tessera_pipeline.publish.mosaic import shard_jobs, zone_grids
from tessera_pipeline.read import lattice


def test_each_zone_grid_covers_its_land_and_tiles_and_shards_list_tiles_in_overlay_order() -> None:
    mask = load_landmask("globe")
    refs = global_refs(mask, every=397)
    random.Random(3).shuffle(refs)
    grids = zone_grids(refs, mask)
    assert list(grids) == sorted({lattice.zone_of_epsg(r.epsg) for r in refs}) and len(grids) > 50
    iy, ix = np.nonzero(mask.grid)
    land_lon, land_lat = ix / CELLS_PER_DEGREE - 180.0 + 0.05, iy / CELLS_PER_DEGREE - 90.0 + 0.05
    land_zone = utm_zone(land_lon)
    for zone in (1, 31, 60):
        mine = [parse_tile_name(r.tile) for r in refs if lattice.zone_of_epsg(r.epsg) == zone]
        land = land_zone == zone
        lons = np.concatenate([land_lon[land], [lon for lon, _ in mine]])
        lats = np.concatenate([land_lat[land], [lat for _, lat in mine]])
        assert grids[zone] == lattice.zone_grid(zone, lons, lats)
    jobs = shard_jobs(refs, grids, 2024)
    assert sum(len(j.tiles) for j in jobs) >= len(refs)
    assert all(list(j.tiles) == sorted(j.tiles, key=lambda r: r.overlay_order) for j in jobs)
