"""`tessera-pipeline demo`: a small synthetic region through `run` on a local Ray cluster, with RANDOM weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np
from rich.table import Table

from tessera_pipeline.cli.outputs import prepare_output_dir
from tessera_pipeline.cli.params import size_callback

if TYPE_CHECKING:
    import xarray as xr

    from tessera_pipeline.read import Reader

DEMO_TILE = "grid_-1.55_53.25"
DEMO_YEAR = 2024
#: The demo region: the 2 x 2 tiles around Manchester this box selects.
DEMO_BBOX = "-1.6,53.2,-1.4,53.4"
DEMO_TILES = ("grid_-1.55_53.25", "grid_-1.45_53.25", "grid_-1.55_53.35", "grid_-1.45_53.35")
#: What the demo writes under --out: the only entries it ever deletes there (see cli/outputs.py).
DEMO_OUTPUTS = ("inputs", "store.zarr", "random_v1_1.pt", f"{DEMO_TILE}.tif", f"{DEMO_TILE}_scales.tif",
                f"{DEMO_TILE}_pca.png", "region_pca.png", "status_map.png")


def _sampled(reader: Reader, region: xr.DataArray) -> Table:
    """`sample_points` at one pixel with data per tile, one without, and one in the sea: a table of what each holds."""
    from pyproj import Transformer

    from tessera_pipeline.grid import tile_centre

    has = np.argwhere(~np.isnan(region.values[0]))
    picks = [has[i] for i in np.linspace(0, len(has) - 1, 4).astype(int)] if len(has) else []
    xs = [float(region.x[c]) for _r, c in picks]
    ys = [float(region.y[r]) for r, _c in picks]
    lon, lat = Transformer.from_crs(region.rio.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    centre = tile_centre(DEMO_TILE)  # outside its reduced-size raster: committed, no data there
    points = [*zip(lon, lat), centre, (-5.0, 53.8)]
    got = reader.sample_points(points, DEMO_YEAR)
    table = Table("lon", "lat", "status", "tile", "embedding[:3]", title="7. sample_points")
    for i, (x, y) in enumerate(points):
        head = ", ".join(f"{v:.3f}" for v in got.embeddings[i, :3])
        table.add_row(f"{x:.5f}", f"{y:.5f}", str(got.status[i]), str(got.tile[i]), head)
    return table


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"),
              show_default=True, help="Working directory: new, empty, or an earlier demo's (its files are replaced).")
@click.option("--overwrite", is_flag=True, default=False,
              help="Use a non-empty --out that the demo did not make (only the demo's own files are replaced).")
@click.option("--size", default="16x16", show_default=True, callback=size_callback,
              help="Reduced size HxW of each of the 4 tiles (a full tile is about 1126x690).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None,
              help="Default: the hardware policy (bf16 on AMX / AVX512-BF16, else fp32).")
@click.option("--local-cpus", type=click.IntRange(1), default=None, help="CPUs of the local Ray cluster (default: all).")
def demo(out_dir: Path, size: str, precision: str | None, overwrite: bool, local_cpus: int | None) -> None:
    """Run the pipeline end to end on an embedded default, and say plainly what it runs on.

    Inputs: 4 synthetic d-pixel tiles around Manchester (reduced-size corners, each with roi.tiff).
    Model: a real-size Tessera v1.1 with RANDOM weights (real weights cannot be downloaded here), so
    the embeddings are NOT Tessera embeddings. The tiles go through `tessera-pipeline run` on a local
    Ray cluster into a local Zarr store, which is then verified and read back: a GeoTIFF, a picture of the
    region (tiles outlined and named, first three principal components as colour) and the run's status map.
    """
    from tessera_pipeline.cli.console import make_console, print_table
    from tessera_pipeline.cli.demo_pictures import draw_region_tiles
    from tessera_pipeline.cli.run_display import print_summary, run_display
    from tessera_pipeline.grid import TileSet
    from tessera_pipeline.inputs.synthetic import check_size_fits, make_synthetic_tile, parse_size
    from tessera_pipeline.model.random_checkpoint import save_random_checkpoint
    from tessera_pipeline.read import open_reader
    from tessera_pipeline.run.config import build_config
    from tessera_pipeline.run.session import start
    from tessera_pipeline.run.status import run_status
    from tessera_pipeline.run.status_map import draw_run_map
    from tessera_pipeline.store import TileStore
    from tessera_pipeline.store.export import export_tiles

    console = make_console()
    console.rule("[bold]tessera-pipeline demo")
    console.print("[yellow]RANDOM WEIGHTS[/]: the model is real-size Tessera v1.1 with random weights; "
                  "the output shows the pipeline working, not real embeddings.")
    hw_size = parse_size(size)
    for tile in DEMO_TILES:
        check_size_fits(tile, hw_size)
    prepare_output_dir(out_dir, command="demo", owned=DEMO_OUTPUTS, overwrite=overwrite)
    inputs, store_url = out_dir / "inputs", str(out_dir / "store.zarr")
    for tile in DEMO_TILES:
        make_synthetic_tile(inputs, DEMO_YEAR, tile, size=hw_size)
    checkpoint = save_random_checkpoint(out_dir / "random_v1_1.pt")
    console.print(f"1. synthetic inputs      {inputs}/{DEMO_YEAR}/ ({len(DEMO_TILES)} tiles of {size} px)")
    console.print(f"2. random checkpoint     {checkpoint}")
    node_types = {cls: {"precision": precision} for cls in ("cpu-amx", "cpu-avx512bf16", "cpu-avx512", "cpu-x86_64",
                                                           "cpu-aarch64")} if precision else {}
    config = build_config({
        "input": str(inputs), "store": store_url, "checkpoint": str(checkpoint), "year": DEMO_YEAR,
        "region": {"bbox": DEMO_BBOX}, "local_cpus": local_cpus, "node_types": node_types,
    }, source="demo")
    console.print(f"3. tessera-pipeline run --input {inputs} --store {store_url} --checkpoint {checkpoint} "
                  f"--year {DEMO_YEAR} --bbox={DEMO_BBOX}   (a local Ray cluster)", markup=False)
    with run_display(console) as on_progress:
        report = start(config, TileSet.from_names(DEMO_TILES), on_progress=on_progress)
    print_summary(console, report, store_url)
    store = TileStore(store_url)
    results = store.verify(DEMO_YEAR)
    bad = [r for r in results if not r.ok]
    console.print(f"4. verified {len(results)} committed tiles in {store_url}: "
                  f"{'all checksums match' if not bad else f'{len(bad)} FAILED'}")
    tif = out_dir / f"{DEMO_TILE}.tif"
    export_tiles(store, DEMO_YEAR, [DEMO_TILE], geotiff=tif, dequantised=True)
    console.print(f"5. exported GeoTIFF      {tif}")
    reader = open_reader(store)
    west, south, east, north = (float(v) for v in DEMO_BBOX.split(","))
    region = reader.read_region((west, south, east, north), DEMO_YEAR)
    console.print(f"6. read_region of the box on UTM zone 30's 10 m grid ({region.sizes['y']} x {region.sizes['x']} px, "
                  f"{region.rio.crs}), each tile's {size} px in its true place")
    print_table(console, _sampled(reader, region))
    tiles = [store.read_tile(DEMO_YEAR, t, dequantise=True) for t in DEMO_TILES]
    table = Table("tile", "size", "EPSG", "version", "precision", "hardware class", title="the store")
    for t in tiles:
        prov = t.provenance
        table.add_row(t.tile, f"{t.embeddings.shape[0]}x{t.embeddings.shape[1]}", str(t.epsg), t.version,
                      str(prov.get("precision")), str(prov.get("hardware_class")))
    print_table(console, table)
    png = out_dir / "region_pca.png"
    draw_region_tiles(tiles, png, title=f"demo region {DEMO_BBOX} ({DEMO_YEAR}): {len(tiles)} tiles of {size} px, "
                                         "RANDOM weights")
    console.print(f"8. picture of the region {png}: the tiles outlined and named, each tile's {size} px where it "
                  "lies and enlarged beside (first 3 principal components as colour)", markup=False)
    status_png = out_dir / "status_map.png"
    draw_run_map(run_status(store_url, with_tiles=True), status_png)
    console.print(f"9. tessera-pipeline status --store {store_url} --map {status_png}: the run's tiles by state "
                  "(complete, failed by reason, pending) on the land mask", markup=False)
    console.print(f"Read it back: tessera-pipeline sample --store {store_url} --year {DEMO_YEAR} --points points.csv "
                  f"--out samples.parquet ; tessera-pipeline export --store {store_url} --year {DEMO_YEAR} "
                  f"--bbox={DEMO_BBOX} --geotiff box.tif --mosaic ; or in Python: "
                  f"open_reader({store_url!r}).read_region(({west}, {south}, {east}, {north}), {DEMO_YEAR})",
                  markup=False)
    if bad or (report.outcome and report.outcome.progress.failed):
        raise SystemExit(1)
