"""`tessera-pipeline export`: committed tiles out of the store as GeoTIFF or geotessera's NPY layout."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from tessera_pipeline.cli.options import RegionRequest, region_options, region_tile_names
from tessera_pipeline.cli.outputs import check_output_dir, check_output_files
from tessera_pipeline.errors import StoreError, TileNotCompleteError

log = logging.getLogger(__name__)


@click.command()
@click.option("--store", "store_url", required=True, help="Store: a local path or s3://bucket/prefix.")
@click.option("--year", type=int, required=True, help="Year of the embeddings.")
@click.option("--tile", "tile_names", multiple=True, metavar="grid_LON_LAT", help="A tile to export (repeatable).")
@region_options
@click.option(
    "--geotiff",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write GeoTIFF here: int8 x128 plus OUT_scales.tif, or float32 with --dequantise. "
    "Several tiles: OUT_{tile}.tif each.",
)
@click.option("--dequantise", is_flag=True, default=False, help="GeoTIFF of float32 values (int8 * scale).")
@click.option(
    "--npy",
    "npy_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write geotessera's local tile layout (NPY + landmask GeoTIFF) under this directory.",
)
@click.option("--mosaic", is_flag=True, default=False,
              help="With --bbox and --geotiff: one GeoTIFF of the box on its UTM zone's 10 m grid, tiles snapped and "
                   "overlaid as the reader does (not one file per tile).")
@click.option("--cog", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --bbox: one Cloud-Optimised GeoTIFF of the box (float32, NaN no-data, overviews that "
                   "sample pixels, never averaging embeddings), streamed window by window.")
@click.option("--bands", default=None, metavar="A:B", help="With --mosaic or --cog: only embedding dimensions A to B-1.")
@click.option("--dst-crs", default=None, metavar="CRS", help="With --mosaic or --cog: resample (nearest) onto this CRS.")
@click.option("--res", type=float, default=None, help="With --dst-crs: pixel size in its units (default 10 m, "
              "0.0001 degree for a geographic CRS).")
@click.option("--release", default=None, metavar="NAME", help="With --mosaic or --cog: read this release's versions.")
@click.option("--overwrite", is_flag=True, default=False, help="Replace output files that already exist.")
def export(
    store_url: str,
    year: int,
    tile_names: tuple[str, ...],
    region: RegionRequest,
    geotiff: Path | None,
    dequantise: bool,
    npy_dir: Path | None,
    mosaic: bool,
    cog: Path | None,
    bands: str | None,
    dst_crs: str | None,
    res: float | None,
    release: str | None,
    overwrite: bool,
) -> None:
    """Export committed tiles with their CRS and transform: GeoTIFF or geotessera NPY layout.

    Every tile is checked against its commit marker first (a missing or damaged object is an error
    naming it); existing output files are refused unless --overwrite; outputs are local paths.
    """
    from tessera_pipeline.grid import parse_tile_name
    from tessera_pipeline.store import TileStore
    from tessera_pipeline.store.export import export_tiles, planned_outputs

    if cog is not None:
        if region.bbox is None or geotiff is not None or npy_dir is not None or mosaic:
            raise click.UsageError("--cog goes with --bbox, alone (no --geotiff, --npy or --mosaic)")
        _export_mosaic(store_url, year, region.bbox, cog, True, release, overwrite, cog=True, bands=bands,
                       dst_crs=dst_crs, res=res)
        return
    if (geotiff is None) == (npy_dir is None):
        raise click.UsageError("choose one output: --geotiff OUT.tif, --cog OUT.tif or --npy DIR")
    if mosaic or release is not None or bands is not None or dst_crs is not None or res is not None:
        if geotiff is None or region.bbox is None or not mosaic:
            raise click.UsageError("--mosaic needs --bbox and --geotiff (--release, --bands, --dst-crs and --res "
                                   "go with --mosaic or --cog)")
        _export_mosaic(store_url, year, region.bbox, geotiff, dequantise, release, overwrite, bands=bands,
                       dst_crs=dst_crs, res=res)
        return
    if dequantise and geotiff is None:
        raise click.UsageError("--dequantise applies to --geotiff only")
    if bool(tile_names) == region.given:
        raise click.UsageError("choose the tiles: --tile (repeatable) or one region flag (--bbox, ...)")
    if geotiff is not None:
        check_output_files([geotiff], "--geotiff", overwrite=True)
    if npy_dir is not None:
        check_output_dir(npy_dir, "--npy")
    for name in tile_names:
        parse_tile_name(name)
    store = TileStore(store_url)
    if store.root_attrs() is None:
        raise StoreError(f"no store at {store.url}")
    if tile_names:
        tiles = sorted(set(tile_names))
        missing = [t for t in tiles if not store.is_complete(year, t)]
        if missing:
            raise TileNotCompleteError(f"not complete in {store.url} for {year}", tile=", ".join(missing))
    else:
        wanted = set(region_tile_names(region))
        done = {k.tile for k in store.list_complete(year)}
        tiles = sorted(wanted & done)
        if not tiles:
            raise StoreError(f"none of the {len(wanted)} tiles in the region is complete in {store.url} for {year}")
        if len(tiles) < len(wanted):
            click.echo(
                f"{len(wanted) - len(tiles)} of {len(wanted)} tiles in the region are not in the store; "
                f"exporting the other {len(tiles)}",
                err=True,
            )
    option = "--geotiff" if geotiff is not None else "--npy"
    check_output_files(planned_outputs(year, tiles, geotiff=geotiff, dequantised=dequantise, npy_dir=npy_dir),
                       option, overwrite=overwrite, layout_root=npy_dir)
    written = export_tiles(store, year, tiles, geotiff=geotiff, dequantised=dequantise, npy_dir=npy_dir)
    click.echo(f"exported {len(tiles)} tile(s), {len(written)} file(s)")
    for path in written:
        click.echo(f"  {path}")


def _band_slice(text: str | None) -> slice:
    """`--bands A:B` as a slice of the 128 dimensions."""
    if text is None:
        return slice(None)
    try:
        start, stop = (int(v) if v else None for v in text.split(":"))
    except ValueError as exc:
        raise click.BadParameter(f"expected A:B (e.g. 0:3), got {text!r}", param_hint="--bands") from exc
    if not (0 <= (start or 0) < (stop if stop is not None else 128) <= 128):
        raise click.BadParameter(f"expected 0 <= A < B <= 128, got {text!r}", param_hint="--bands")
    return slice(start, stop)


def _export_mosaic(store_url: str, year: int, bbox: str, out: Path, dequantised: bool, release: str | None,
                   overwrite: bool, *, cog: bool = False, bands: str | None = None, dst_crs: str | None = None,
                   res: float | None = None) -> None:
    """One GeoTIFF (or COG) of a box through the reader, written chunk by chunk with a progress bar."""
    from tessera_pipeline.cli.console import make_console, progress
    from tessera_pipeline.read import open_reader
    from tessera_pipeline.read.geotiff import write_region_cog, write_region_geotiff
    from tessera_pipeline.region import parse_bbox

    west, south, east, north = parse_bbox(bbox)
    band_sel = _band_slice(bands)
    if res is not None and dst_crs is None:
        raise click.UsageError("--res goes with --dst-crs")
    files = [out] if dequantised else [out, out.with_name(f"{out.stem}_scales{out.suffix}")]
    check_output_files(files, "--cog" if cog else "--geotiff", overwrite=overwrite)
    reader = open_reader(store_url, release=release)
    if release is None and reader.store.root_attrs() is None:
        raise StoreError(f"no store at {reader.store.url}")
    da = reader.read_region((west, south, east, north), year, dequantise=dequantised, crs=dst_crs, res=res)
    da = da.isel(band=band_sel)
    blocks = len(da.chunks[1]) * len(da.chunks[2])
    write = write_region_cog if cog else write_region_geotiff
    with progress(make_console(stderr=True), "writing the mosaic", blocks, unit="blocks") as advance:
        done = write(da, out, on_block=lambda _done, _total: advance(1))
    written = done if isinstance(done, list) else [done]
    click.echo(f"exported a {da.sizes['y']} x {da.sizes['x']} mosaic ({da.rio.crs}), {len(written)} file(s)")
    for path in written:
        click.echo(f"  {path}")
