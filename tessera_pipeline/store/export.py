"""Export committed tiles for GIS tools and geotessera: GeoTIFF (rasterio) or geotessera's NPY layout.

GeoTIFFs carry the tile's own UTM CRS and transform. The NPY layout is geotessera's local mirror:
`global_0.1_degree_representation/{year}/grid_X_Y/grid_X_Y{,_scales}.npy` plus the landmask
GeoTIFF `global_0.1_degree_tiff_all/grid_X_Y.tiff` from which geotessera takes the georeference.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tessera_pipeline.store.zarr_store import TileData, TileStore, dequantise

log = logging.getLogger(__name__)

EMBEDDINGS_DIR_NAME = "global_0.1_degree_representation"
LANDMASKS_DIR_NAME = "global_0.1_degree_tiff_all"
#: Rows written per block, so a dequantised export never holds a whole float32 tile twice.
ROW_BLOCK = 256


def _profile(data: TileData, count: int, dtype: str, nodata: float | None) -> dict[str, Any]:
    """A tiled, compressed GeoTIFF profile in the tile's CRS and transform."""
    from affine import Affine
    from rasterio.crs import CRS

    height, width = data.scales.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype,
        "crs": CRS.from_epsg(data.epsg),
        "transform": Affine(*data.transform),
        "compress": "deflate",
        "zlevel": 1,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
    }
    if height >= 16 and width >= 16:
        profile.update(tiled=True, blockxsize=min(256, _block16(width)), blockysize=min(256, _block16(height)))
    if nodata is not None:
        profile["nodata"] = nodata
    return profile


def _block16(n: int) -> int:
    """Largest multiple of 16 not above n (GeoTIFF block sizes must be multiples of 16)."""
    return max(16, (n // 16) * 16)


def _tags(data: TileData) -> dict[str, str]:
    """GeoTIFF metadata tags naming the tile, its version and its provenance."""
    prov = data.provenance
    return {
        "TESSERA_TILE": data.tile,
        "TESSERA_YEAR": str(data.year),
        "TESSERA_VERSION": data.version,
        "TESSERA_MODEL_VERSION": str(prov.get("model_version", "")),
        "TESSERA_CHECKPOINT_SHA256": str(prov.get("checkpoint_sha256", "")),
    }


def write_geotiff(data: TileData, out: Path, *, dequantised: bool) -> list[Path]:
    """Write one tile as GeoTIFF: float32 x128 (NaN no-data), or int8 x128 plus `*_scales.tif`."""
    import rasterio

    height, _width, dims = data.embeddings.shape
    descriptions = [f"embedding_{i:03d}" for i in range(dims)]
    if dequantised:
        with rasterio.open(out, "w", **_profile(data, dims, "float32", float("nan"))) as dst:
            dst.update_tags(**_tags(data), TESSERA_VALUES="dequantised float32 = int8 * scale")
            dst.descriptions = tuple(descriptions)
            for r0 in range(0, height, ROW_BLOCK):
                rows = slice(r0, min(r0 + ROW_BLOCK, height))
                block = dequantise(data.embeddings[rows], data.scales[rows])
                window = rasterio.windows.Window(0, r0, block.shape[1], block.shape[0])
                dst.write(np.moveaxis(block, 2, 0), window=window)
        return [out]
    scales_out = scales_path(out)
    with rasterio.open(out, "w", **_profile(data, dims, "int8", None)) as dst:
        dst.update_tags(**_tags(data), TESSERA_VALUES=f"int8; multiply by the scales in {scales_out.name}")
        dst.descriptions = tuple(descriptions)
        for r0 in range(0, height, ROW_BLOCK):
            block = data.embeddings[r0 : r0 + ROW_BLOCK]
            dst.write(np.moveaxis(block, 2, 0), window=rasterio.windows.Window(0, r0, block.shape[1], block.shape[0]))
    with rasterio.open(scales_out, "w", **_profile(data, 1, "float32", float("nan"))) as dst:
        dst.update_tags(**_tags(data), TESSERA_VALUES="per-pixel dequantisation scale")
        dst.write(data.scales, 1)
    return [out, scales_out]


def scales_path(out: Path) -> Path:
    """The scales GeoTIFF written beside an int8 GeoTIFF: OUT_scales.tif."""
    return out.with_name(f"{out.stem}_scales{out.suffix or '.tif'}")


def geotiff_path(geotiff: Path, tile: str, n_tiles: int) -> Path:
    """The GeoTIFF of one tile: `geotiff` itself for a single tile, else OUT_{tile}.tif."""
    return geotiff if n_tiles == 1 else geotiff.with_name(f"{geotiff.stem}_{tile}{geotiff.suffix or '.tif'}")


def npy_paths(out_dir: Path, year: int, tile: str) -> list[Path]:
    """The three files of one tile in geotessera's layout: embeddings, scales, landmask GeoTIFF."""
    tile_dir = out_dir / EMBEDDINGS_DIR_NAME / str(year) / tile
    return [tile_dir / f"{tile}.npy", tile_dir / f"{tile}_scales.npy", out_dir / LANDMASKS_DIR_NAME / f"{tile}.tiff"]


def planned_outputs(
    year: int, tiles: list[str], *, geotiff: Path | None = None, dequantised: bool = False, npy_dir: Path | None = None
) -> list[Path]:
    """Every file `export_tiles` will write for these arguments (checked for clashes before any read)."""
    paths: list[Path] = []
    for tile in tiles:
        if npy_dir is not None:
            paths += npy_paths(npy_dir, year, tile)
        elif geotiff is not None:
            out = geotiff_path(geotiff, tile, len(tiles))
            paths += [out] if dequantised else [out, scales_path(out)]
    return paths


def write_npy_layout(data: TileData, out_dir: Path) -> list[Path]:
    """Write one tile in geotessera's local layout: int8 + scales NPY and the georeferencing landmask."""
    import rasterio

    emb_path, sc_path, mask_path = npy_paths(out_dir, data.year, data.tile)
    emb_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(emb_path, np.ascontiguousarray(data.embeddings, dtype=np.int8))
    np.save(sc_path, np.ascontiguousarray(data.scales, dtype=np.float32))
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    land = np.isfinite(data.scales).astype(np.uint8)
    profile = _profile(data, 1, "uint8", None)
    profile["compress"] = "lzw"
    profile.pop("zlevel")
    with rasterio.open(mask_path, "w", **profile) as dst:
        dst.update_tags(TESSERA_TILE=data.tile, TESSERA_VALUES="1 = land (finite scale), 0 = no data")
        dst.write(land, 1)
    return [emb_path, sc_path, mask_path]


def export_tiles(
    store: TileStore,
    year: int,
    tiles: list[str],
    *,
    geotiff: Path | None = None,
    dequantised: bool = False,
    npy_dir: Path | None = None,
) -> list[Path]:
    """Export complete tiles: to `geotiff` (one file, or `{stem}_{tile}.tif` for several) or to `npy_dir`.

    Each tile is read with verification (objects present, checksums equal) before anything of it is
    written, so a damaged tile raises StoreIntegrityError naming the object instead of exporting.
    """
    written: list[Path] = []
    for tile in tiles:
        data = store.read_tile(year, tile, verify=True)
        if npy_dir is not None:
            written += write_npy_layout(data, npy_dir)
        elif geotiff is not None:
            written += write_geotiff(data, geotiff_path(geotiff, tile, len(tiles)), dequantised=dequantised)
        log.info("exported %s/%s", year, tile)
    return written
