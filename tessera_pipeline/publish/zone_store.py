"""geotessera's zone-store layout: one Zarr v3 group per UTM zone (`utm{zz}`) with embeddings (time, band, y, x)
and scales (time, y, x) on the zone's 10 m grid, and the registered `geoemb:`, `proj:` and `spatial:` conventions.

Layout, codecs, fill values and attributes follow geotessera 0.11.0's `zarr-init` (`geotessera/zarr.py`):
shards (1, 128, 4096, 4096) of (1, 128, 32, 32) chunks, Blosc zstd level 3; scales fill +inf (land not yet
filled), NaN for water and no data. The per-zone stretch statistics geotessera adds for its previews are
not written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera_pipeline.errors import PublishError
from tessera_pipeline.read.lattice import SHARD_SIZE, ZoneGrid
from tessera_pipeline.store.encoding import georef_attributes
from tessera_pipeline.store.records import geoemb_attributes, own

#: Spatial pixels per inner chunk side.
INNER_CHUNK = 32
N_BANDS = 128


def group_name(zone: int) -> str:
    """The zone's group: `utm01` ... `utm60`."""
    return f"utm{int(zone):02d}"


def root_attributes(model_version: str, source: Mapping[str, Any]) -> dict[str, Any]:
    """The store root's attributes: geotessera's `geoemb:` set, and where the mosaic came from under our prefix."""
    return {**geoemb_attributes(model_version, N_BANDS, "utm_zones", "+inf"), own("source"): dict(source)}


def zone_attributes(grid: ZoneGrid) -> dict[str, Any]:
    """A zone group's `proj:` and `spatial:` attributes, registered through zarr-cm as geotessera does."""
    return georef_attributes(grid.epsg, tuple(grid.transform), grid.height, grid.width)


def grid_of(group: Any, zone: int) -> ZoneGrid:
    """The ZoneGrid an existing zone group was laid out on."""
    a, _b, c, _d, _e, f = group.attrs["spatial:transform"]
    height, width = group.attrs["spatial:shape"]
    return ZoneGrid(zone=int(zone), origin_x=float(c), origin_y=float(f),
                    width=int(width), height=int(height))


def create_zone(root: Any, grid: ZoneGrid, years: list[int]) -> Any:
    """Create a zone group with empty arrays (metadata only: nothing is written until shards are filled)."""
    from zarr.codecs import BloscCodec

    group = root.create_group(group_name(grid.zone), attributes=zone_attributes(grid))
    blosc = BloscCodec(cname="zstd", clevel=3)
    t, h, w = len(years), grid.height, grid.width
    group.create_array("embeddings", shape=(t, N_BANDS, h, w), chunks=(1, N_BANDS, INNER_CHUNK, INNER_CHUNK),
                       shards=(1, N_BANDS, SHARD_SIZE, SHARD_SIZE), dtype=np.int8, fill_value=np.int8(0),
                       compressors=blosc, dimension_names=["time", "band", "y", "x"])
    group.create_array("scales", shape=(t, h, w), chunks=(1, INNER_CHUNK, INNER_CHUNK),
                       shards=(1, SHARD_SIZE, SHARD_SIZE), dtype=np.float32, fill_value=np.float32("inf"),
                       compressors=blosc, dimension_names=["time", "y", "x"])
    coords = {"x": grid.origin_x + (np.arange(w) + 0.5) * 10.0, "y": grid.origin_y - (np.arange(h) + 0.5) * 10.0,
              "time": np.asarray(years, np.int32), "band": np.arange(N_BANDS, dtype=np.int32)}
    for name, data in coords.items():
        group.create_array(name, shape=data.shape, dtype=data.dtype, fill_value=0, compressors=blosc,
                           dimension_names=[name])
        group[name][:] = data
    return group


def add_year(group: Any, year: int) -> int:
    """The time index of `year` in a zone group, appending it (arrays grow by one time step) when absent.

    Years are only appended, as geotessera's `extend_store` does: an earlier year than the axis holds would need
    every existing chunk renumbered, so it is refused (PublishError) rather than appended out of order.
    """
    years = [int(v) for v in group["time"][:]]
    if year in years:
        return years.index(year)
    if years and year < max(years):
        raise PublishError(f"zone group {group.basename}: cannot add {year} to a time axis ending at {max(years)}; years "
                           f"are only appended (geotessera's rule): build {year} into a new zone store")
    for name in ("embeddings", "scales"):
        array = group[name]
        array.resize((len(years) + 1, *array.shape[1:]))
    group["time"].resize((len(years) + 1,))
    group["time"][len(years)] = year
    return len(years)


def shard_counts(grid: ZoneGrid) -> tuple[int, int]:
    """Shard rows and columns of a zone grid."""
    return math.ceil(grid.height / SHARD_SIZE), math.ceil(grid.width / SHARD_SIZE)
