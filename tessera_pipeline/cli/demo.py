"""`tessera-pipeline demo`: one synthetic tile, encoded with RANDOM weights into a local Zarr store."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

DEMO_TILE = "grid_-1.55_53.25"
DEMO_YEAR = 2024


def write_pca_png(embeddings: np.ndarray, path: Path) -> None:
    """Save the first three principal components of (H, W, D) embeddings as an RGB PNG."""
    import rasterio
    import rasterio.errors

    h, w, d = embeddings.shape
    flat = embeddings.reshape(-1, d).astype(np.float64)
    flat -= flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    pcs = flat @ vt[:3].T
    lo, hi = np.percentile(pcs, 2, axis=0), np.percentile(pcs, 98, axis=0)
    rgb = np.clip((pcs - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    image = (rgb.reshape(h, w, 3) * 255).astype(np.uint8).transpose(2, 0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=w, height=h, count=3, dtype="uint8") as dst:
            dst.write(image)


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"),
              show_default=True, help="Working directory (replaced).")
@click.option("--size", default="32x32", show_default=True, help="Reduced tile size HxW (the full tile is 1126x690).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None, help="Default: the hardware policy.")
def demo(out_dir: Path, size: str, precision: str | None) -> None:
    """Run the pipeline end to end on an embedded default, and say plainly what it runs on.

    Inputs: a synthetic d-pixel tile (a reduced-size corner of the Manchester tile, with roi.tiff).
    Model: a real-size Tessera v1.1 with RANDOM weights (real weights cannot be downloaded here), so
    the embeddings are NOT Tessera embeddings. Output: a local Zarr store, verified, a GeoTIFF, and a
    PNG of the first three principal components.
    The distributed Ray run is not built yet: this encodes one tile in this process.
    """
    from tessera_pipeline.encode.setup import build_encoder, model_attributes, provenance
    from tessera_pipeline.inputs.dpixel import open_tile
    from tessera_pipeline.inputs.synthetic import make_synthetic_tile, parse_size
    from tessera_pipeline.model.random_checkpoint import save_random_checkpoint
    from tessera_pipeline.store import TileStore, write_encoded_tile
    from tessera_pipeline.store.export import export_tiles

    console = Console()
    console.rule("[bold]tessera-pipeline demo")
    console.print("[yellow]RANDOM WEIGHTS[/]: the model is real-size Tessera v1.1 with random weights; "
                  "the output shows the pipeline working, not real embeddings.")
    shutil.rmtree(out_dir, ignore_errors=True)
    inputs, store_url = out_dir / "inputs", str(out_dir / "store.zarr")
    tile_dir = make_synthetic_tile(inputs, DEMO_YEAR, DEMO_TILE, size=parse_size(size))
    checkpoint = save_random_checkpoint(out_dir / "random_v1_1.pt")
    console.print(f"1. synthetic input tile  {tile_dir}")
    console.print(f"2. random checkpoint     {checkpoint}")
    encoder, hw = build_encoder(str(checkpoint), precision=precision)  # type: ignore[arg-type]
    tile = open_tile(tile_dir)
    with console.status(f"3. encoding {tile.height}x{tile.width} px ({encoder.settings.precision} on {hw.kind})"):
        encoded = encoder.encode(tile)
    s = encoded.stats
    console.print(f"3. encoded {s.pixels} px in {s.total_s:.1f} s ({1e3 * s.total_s / s.pixels:.1f} ms/px, "
                  f"{encoder.settings.precision} on {hw.kind})")
    assert tile.geometry is not None
    record = write_encoded_tile(store_url, DEMO_YEAR, DEMO_TILE, encoded.embeddings, encoded.scales,
                                epsg=tile.geometry.epsg, transform=tuple(tile.geometry.transform),
                                provenance=provenance(encoder, hw, tile, encoded), model_attrs=model_attributes(encoder))
    store = TileStore(store_url)
    verified = store.verify_tile(DEMO_YEAR, DEMO_TILE)
    console.print(f"4. committed to {store_url} (version {record.version}); checksums verified: {verified.ok}")
    tif = out_dir / f"{DEMO_TILE}.tif"
    export_tiles(store, DEMO_YEAR, [DEMO_TILE], geotiff=tif, dequantised=True)
    console.print(f"5. exported GeoTIFF      {tif}")
    png = out_dir / f"{DEMO_TILE}_pca.png"
    write_pca_png(store.read_tile(DEMO_YEAR, DEMO_TILE, dequantise=True).embeddings, png)
    console.print(f"6. first 3 principal components as RGB: {png}")
    table = Table("tile", "size", "EPSG", "int8 range", "scale median", "complete tiles in store")
    table.add_row(DEMO_TILE, f"{tile.height}x{tile.width}", str(tile.geometry.epsg),
                  f"{int(encoded.embeddings.min())}..{int(encoded.embeddings.max())}",
                  f"{float(np.median(encoded.scales)):.4f}", str(len(store.list_complete(DEMO_YEAR))))
    console.print(table)
