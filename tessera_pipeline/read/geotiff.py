"""A `read_region` result written as one tiled GeoTIFF, block by block (memory bounded by one chunk of the region),
or as a Cloud-Optimised GeoTIFF (overviews, tiles in COG order) made from it by GDAL's COG driver, which streams."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tessera_pipeline.store.records import PREFIX

#: GeoTIFF internal tile edge (a multiple of 16).
BLOCK = 256
#: GDAL's block cache while writing, MB (its default, 5 % of RAM, would dominate the peak memory of an export).
GDAL_CACHE_MB = 256


def _profile(da: Any, count: int, dtype: str, nodata: float | None) -> dict[str, Any]:
    """A tiled, compressed GeoTIFF profile with the region's CRS and transform."""
    height, width = da.sizes["y"], da.sizes["x"]
    profile: dict[str, Any] = {"driver": "GTiff", "height": height, "width": width, "count": count, "dtype": dtype,
                               "crs": da.rio.crs, "transform": da.rio.transform(), "compress": "deflate", "zlevel": 1,
                               "interleave": "pixel", "BIGTIFF": "IF_SAFER"}
    if height >= 16 and width >= 16:
        profile.update(tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
    if nodata is not None:
        profile["nodata"] = nodata
    return profile


def _blocks(da: Any) -> list[tuple[slice, slice]]:
    """The (rows, cols) windows of the region's dask chunks."""
    rows = np.cumsum((0, *da.chunks[1]))
    cols = np.cumsum((0, *da.chunks[2]))
    return [(slice(int(r0), int(r1)), slice(int(c0), int(c1)))
            for r0, r1 in zip(rows[:-1], rows[1:]) for c0, c1 in zip(cols[:-1], cols[1:])]


def write_region_geotiff(da: Any, out: Path, *, on_block: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write a region (from `Reader.read_region`) as GeoTIFF: float32 x128 with NaN no-data, or int8 x128 plus
    `OUT_scales.tif` when it holds int8 values. Computes and writes one chunk at a time."""
    import rasterio
    from rasterio.windows import Window

    quantised = da.dtype == np.int8
    descriptions = tuple(f"embedding_{int(b):03d}" for b in da.band.values)
    tags = {"TESSERA_" + k[len(PREFIX):].upper(): str(v) for k, v in da.attrs.items() if k.startswith(PREFIX)}
    written = [out]
    blocks = _blocks(da)
    scales_path = out.with_name(f"{out.stem}_scales{out.suffix}")
    profile = _profile(da, da.sizes["band"], str(da.dtype), None if quantised else float("nan"))
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(out, "w", **profile) as dst:
        dst.update_tags(**tags)
        dst.descriptions = descriptions
        scales_dst = rasterio.open(scales_path, "w", **_profile(da, 1, "float32", float("nan"))) if quantised else None
        try:
            for i, (rows, cols) in enumerate(blocks):
                window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
                part = da.isel(y=rows, x=cols)
                dst.write(np.asarray(part.values), window=window)
                if scales_dst is not None:
                    scales_dst.write(np.asarray(part.scales.values)[None], window=window)
                if on_block is not None:
                    on_block(i + 1, len(blocks))
        finally:
            if scales_dst is not None:
                scales_dst.close()
                written.append(scales_path)
    return written


def write_region_cog(da: Any, out: Path, *, on_block: Callable[[int, int], None] | None = None) -> Path:
    """Write a region as one Cloud-Optimised GeoTIFF with overviews (nearest neighbour: embeddings are not averaged).

    The region is streamed into a temporary tiled GeoTIFF next to `out` (one chunk at a time), then GDAL's COG
    driver lays out the tiles and builds the overviews from it, reading it block by block. int8 regions are
    written dequantised (a COG holds one array)."""
    import rasterio.shutil

    if da.dtype == np.int8:
        raise ValueError("a COG holds dequantised float32 values: read the region with dequantise=True")
    staging = out.with_name(f".{out.name}.staging.tif")
    try:
        write_region_geotiff(da, staging, on_block=on_block)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            rasterio.shutil.copy(staging, out, driver="COG", COMPRESS="DEFLATE", LEVEL=1, BLOCKSIZE=BLOCK,
                                 OVERVIEW_RESAMPLING="NEAREST", RESAMPLING="NEAREST", BIGTIFF="IF_SAFER",
                                 NUM_THREADS="2")
    finally:
        staging.unlink(missing_ok=True)
    return out


def is_cog(path: Path) -> list[str]:
    """Why a file is not a Cloud-Optimised GeoTIFF (empty when it is): GDAL's COG layout, internal tiles, overviews."""
    import rasterio

    problems = []
    with rasterio.open(path) as src:
        if src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            problems.append("no COG layout (IMAGE_STRUCTURE LAYOUT=COG)")
        if src.block_shapes[0] != (BLOCK, BLOCK) and min(src.height, src.width) > BLOCK:
            problems.append(f"blocks {src.block_shapes[0]}, not {BLOCK} x {BLOCK} tiles")
        if max(src.height, src.width) > BLOCK and not src.overviews(1):
            problems.append("no overviews")
    return problems
