"""A `read_region` result written as one tiled GeoTIFF, block by block (memory bounded by one chunk of the region),
or as a Cloud-Optimised GeoTIFF: overviews sampled from the same chunks in numpy, laid out by GDAL's COG driver."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from affine import Affine

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


def write_region_geotiff(da: Any, out: Path, *, on_block: Callable[[int, int], None] | None = None,
                         sinks: Sequence[Callable[[np.ndarray, slice, slice], None]] = ()) -> list[Path]:
    """Write a region (from `Reader.read_region`) as GeoTIFF: float32 x128 with NaN no-data, or int8 x128 plus
    `OUT_scales.tif` when it holds int8 values. Computes and writes one chunk at a time, each also handed to
    `sinks` (values (band, y, x), rows, cols)."""
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
                values = np.asarray(part.values)
                dst.write(values, window=window)
                for sink in sinks:
                    sink(values, rows, cols)
                if scales_dst is not None:
                    scales_dst.write(np.asarray(part.scales.values)[None], window=window)
                if on_block is not None:
                    on_block(i + 1, len(blocks))
        finally:
            if scales_dst is not None:
                scales_dst.close()
                written.append(scales_path)
    return written


def overview_factors(height: int, width: int) -> list[int]:
    """The COG's overview levels (2, 4, 8, ...), as GDAL's COG driver picks them: until one fits in a block."""
    factors: list[int] = []
    while max(-(-height // (2 ** len(factors))), -(-width // (2 ** len(factors)))) > BLOCK:
        factors.append(2 ** (len(factors) + 1))
    return factors


def sampled_indices(size: int, factor: int) -> np.ndarray:
    """The pixel each overview pixel samples along an axis: the centre of its `factor`-pixel footprint (the last,
    partial footprint's last pixel at most). Nearest neighbour: an embedding is never averaged with another."""
    return np.minimum(np.arange(-(-size // factor)) * factor + factor // 2, size - 1)


class _Overview:
    """One overview level, written window by window into its own tiled GeoTIFF as the region's chunks go by."""

    def __init__(self, da: Any, path: Path, factor: int) -> None:
        import rasterio

        self.rows = sampled_indices(da.sizes["y"], factor)
        self.cols = sampled_indices(da.sizes["x"], factor)
        profile = _profile(da, da.sizes["band"], str(da.dtype), float("nan"))
        profile.update(height=len(self.rows), width=len(self.cols), transform=da.rio.transform() * Affine.scale(factor))
        if min(len(self.rows), len(self.cols)) < 16:
            for key in ("tiled", "blockxsize", "blockysize"):
                profile.pop(key, None)
        self.dst = rasterio.open(path, "w", **profile)

    def take(self, values: np.ndarray, rows: slice, cols: slice) -> None:
        """Write the overview pixels this chunk of the base holds."""
        from rasterio.windows import Window

        r0, r1 = np.searchsorted(self.rows, [rows.start, rows.stop])
        c0, c1 = np.searchsorted(self.cols, [cols.start, cols.stop])
        if r0 < r1 and c0 < c1:
            part = values[:, self.rows[r0:r1] - rows.start][:, :, self.cols[c0:c1] - cols.start]
            self.dst.write(part, window=Window(int(c0), int(r0), int(c1 - c0), int(r1 - r0)))


def _overview_vrt(staging: Path, levels: list[Path]) -> str:
    """A VRT of the staging GeoTIFF (its CRS, transform, tags, band names, NaN no-data) whose bands carry the
    precomputed overview levels, for GDAL's COG driver to copy as they are."""
    import rasterio

    with rasterio.open(staging) as src:
        head = (f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}"><SRS>{escape(src.crs.to_wkt())}</SRS>'
                f'<GeoTransform>{", ".join(repr(v) for v in src.transform.to_gdal())}</GeoTransform><Metadata>'
                + "".join(f"<MDI key={quoteattr(k)}>{escape(v)}</MDI>" for k, v in src.tags().items()) + "</Metadata>")
        kind = {"float32": "Float32"}[src.dtypes[0]]
        bands = []
        for b, name in enumerate(src.descriptions, start=1):
            overviews = "".join(f"<Overview><SourceFilename>{escape(str(p))}</SourceFilename><SourceBand>{b}</SourceBand>"
                                f"</Overview>" for p in levels)
            bands.append(f'<VRTRasterBand dataType="{kind}" band="{b}"><NoDataValue>nan</NoDataValue>'
                         f"<Description>{escape(name or '')}</Description><SimpleSource><SourceFilename>"
                         f"{escape(str(staging))}</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource>"
                         f"{overviews}</VRTRasterBand>")
    return head + "".join(bands) + "</VRTDataset>"


def write_region_cog(da: Any, out: Path, *, on_block: Callable[[int, int], None] | None = None) -> Path:
    """Write a region as one Cloud-Optimised GeoTIFF with overviews that sample pixels (embeddings are not averaged).

    The region is streamed, one chunk at a time, into a tiled staging GeoTIFF and, decimated, into one GeoTIFF per
    overview level (`sampled_indices`), all beside `out`; GDAL's COG driver then lays them out as they are (it
    would build 128-band overviews itself some 60x slower: docs/benchmarks.md). int8 regions are refused (a COG holds one array)."""
    import rasterio.shutil

    if da.dtype == np.int8:
        raise ValueError("a COG holds dequantised float32 values: read the region with dequantise=True")
    staging = out.with_name(f".{out.name}.staging.tif")
    vrt = out.with_name(f".{out.name}.staging.vrt")
    factors = overview_factors(da.sizes["y"], da.sizes["x"])
    levels = [out.with_name(f".{out.name}.staging.ov{f}.tif") for f in factors]
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), ExitStack() as stack:
            overviews = []
            for path, factor in zip(levels, factors):
                overviews.append(_Overview(da, path, factor))
                stack.callback(overviews[-1].dst.close)
            write_region_geotiff(da, staging, on_block=on_block, sinks=[o.take for o in overviews])
        vrt.write_text(_overview_vrt(staging, levels))
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            rasterio.shutil.copy(vrt, out, driver="COG", COMPRESS="DEFLATE", LEVEL=1, BLOCKSIZE=BLOCK,
                                 OVERVIEWS="FORCE_USE_EXISTING" if levels else "NONE", OVERVIEW_RESAMPLING="NEAREST",
                                 BIGTIFF="IF_SAFER", NUM_THREADS="2")
    finally:
        for path in (staging, vrt, *levels):
            path.unlink(missing_ok=True)
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
